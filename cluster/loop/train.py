"""A training run: its actors, then its steps in the order a schedule runs them (sync.py: one after another;
overlap.py: the next rollouts made while a step trains, rollout.max_staleness). Around the steps: held-out
evaluation at step 0, every `eval.every` steps and at the end; a checkpoint every `checkpoint.every` steps and at
the end; a stop after `max_skipped_steps` steps in a row with nothing to learn."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.checkpoint import claim, resume_fields
from cluster.config import RunConfig, to_dict
from cluster.console import quiet_driver
from cluster.loop.held_out import HeldOutEval
from cluster.loop.run import Run
from cluster.loop.overlap import Overlapped
from cluster.loop.step import StepParts
from cluster.loop.sync import Synchronous
from cluster.metrics import MetricsLog
from cluster.model_card import write_model_card
from cluster.models import resolve_model
from cluster.preflight import check_sampling
from cluster.report import plot_run
from cluster.spec import response_format, rollout_spec, run_protocol
from cluster.tasks.data import load_problems
from cluster.workers import colocated_on_gpu, start_ray
from learner.advantages import ADVANTAGE_ESTIMATORS
from learner.credit import CREDIT, SCORES_ANSWERS
from rewards import build_rewards


class RunStalled(RuntimeError):
    """Steps in a row produced nothing to learn from: the run stops instead of spinning."""


def schedule_for(config: RunConfig) -> type:
    return Overlapped if config.rollout.max_staleness else Synchronous


def train(config: RunConfig, resume: str | None = None) -> Path:
    """Run steps up to `config.steps`, from scratch or from a checkpoint; returns the run folder."""
    run_dir = Path(config.output_dir).resolve()
    run = Run(config, run_dir)
    settings = to_dict(config)
    checkpoint, run_id = claim(run.checkpoints, settings, resume, run.resume_hint)
    problems, report = load_problems(config.data)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    log_dir = None if config.cluster.show_logs else run_dir / "logs"
    if log_dir is not None:
        quiet_driver(log_dir)
    tqdm.write(f"data: {report.summary()}")
    model_path = resolve_model(config.model, config.data.toy)
    if resume == "auto" and checkpoint is None:
        tqdm.write(f"--resume auto: no checkpoint in {run.checkpoints.root}, starting from step 0")
    start_ray(config, log_dir)
    tqdm.write(f"run folder: {run_dir}" + (f" (library logs in {log_dir})" if log_dir else ""))

    r = config.rollout
    rewards = build_rewards(config.reward.components, response_format(config), r.max_tokens)
    spec = rollout_spec(config, rewards, model_path)
    if config.reward.motivated:
        tqdm.write(f"system prompt with motivation:\n{spec.system_prompt}")
    log, finished = None, False
    try:
        run.start(model_path)
        check_sampling(config, run.pool, training=True)
        parts = StepParts(config, run.pool, run.learner, run_protocol(config), spec, rewards,
                          ADVANTAGE_ESTIMATORS[config.learner.advantage_estimator], CREDIT[config.learner.credit],
                          config.learner.credit in SCORES_ANSWERS, run_dir / "samples", colocated_on_gpu(config),
                          problems)
        held_out = HeldOutEval(config, run.pool, spec, run_dir)
        state = {"step": 0, "adapter_version": 0, "metrics_offset": 0, "eval_history": []}
        if checkpoint is not None:
            state = run.restore(checkpoint)
            held_out.history = [tuple(h) for h in state["eval_history"]]
            tqdm.write(f"resumed from {checkpoint} at step {state['step']}")
        log = MetricsLog(run_dir, truncate_at=state["metrics_offset"] if checkpoint is not None else 0,
                         first_step=state["step"] + 1, trackers=config.logging.trackers,
                         project=config.logging.project, params=settings, run_ids=state.get("trackers"))
        trackers = {"trackers": log.run_ids()} if log.run_ids() else {}  # the tracker runs a resume continues
        first = state["step"] + 1
        if held_out.every and first == 1:
            log.log(0, held_out.run(0))
        version, unusable = state["adapter_version"], 0
        ahead = run.saved_rollouts(checkpoint) if checkpoint is not None else {}
        schedule = schedule_for(config)(parts, problems, first, last=config.steps, version=version, **ahead)
        try:
            for step in tqdm(range(first, config.steps + 1), desc="train", unit="step", initial=first - 1,
                             total=config.steps):
                t0 = time.perf_counter()
                result = schedule.step(step, version)
                metrics = {**result.metrics, "time_step": time.perf_counter() - t0}
                if result.trained:
                    version, unusable = step, 0
                else:
                    tqdm.write(f"step {step}: skipped, {result.skipped_because}")
                    unusable += 1
                    if unusable >= config.max_skipped_steps:
                        log.log(step, {**metrics, "adapter_version": version})
                        raise RunStalled(f"{unusable} steps in a row had nothing to learn from (step {step}: "
                                         f"{result.skipped_because}; max_skipped_steps={config.max_skipped_steps}); "
                                         f"the run stops. {run.resume_hint}")
                metrics["adapter_version"] = version
                held_out.track(metrics)
                if held_out.due(step, config.steps):
                    with schedule.quiet():
                        metrics.update(held_out.run(step))
                log.log(step, metrics)
                if step == config.steps or (config.checkpoint.every and step % config.checkpoint.every == 0):
                    with schedule.quiet():
                        saved = run.save(step, {"step": step, "adapter_version": version, "data_position": step,
                                                "metrics_offset": log.offset(), "eval_history": held_out.history,
                                                "run_id": run_id, "config": resume_fields(settings), **trackers},
                                         schedule.pending())
                    tqdm.write(f"checkpoint: {saved}")
        finally:
            schedule.close()
        final = run_dir / "adapter"
        run.learner.export_adapter(str(final))
        write_model_card(final, config, "train", model_path, run_dir)
        plot = plot_run(run_dir)
        if len(held_out.history) > 1:
            (s0, before), (s1, after) = held_out.history[0], held_out.history[-1]
            tqdm.write(f"held-out pass@1: {before:.3f} at step {s0} -> {after:.3f} at step {s1}")
        tqdm.write(f"final adapter: {final}\nmetrics: {log.path}")
        tqdm.write(" | ".join([f"run folder: {run_dir}", f"plot: {plot}", *(t.where for t in log.trackers.values())]))
        finished = True
    finally:
        if log is not None:
            log.close(ok=finished)
        run.stop()
        for reward in rewards:
            reward.close()
    return run_dir
