"""The training loop: prompts -> MOTIF rollout -> rewards -> GRPO update -> adapter push -> metrics, with
held-out evaluation at step 0, every `eval.every` steps and at the end."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.checkpoint import Checkpoints, claim, load_state, resume_fields
from cluster.config import RunConfig, to_dict
from cluster.console import quiet_driver
from cluster.tasks.data import Problem, load_problems
from cluster.evaluation import EvalFailed, eval_problems, eval_spec, evaluate, write_eval
from cluster.metrics import MetricsLog
from cluster.models import resolve_model
from cluster.report import plot_run
from cluster.spec import motif_spec
from cluster.workers import colocated_on_gpu, start_ray
from learner.files import write_files
from learner.credit import CREDIT
from learner.advantages import ADVANTAGE_ESTIMATORS
from rewards import RewardSample, build_rewards, score_samples
from rollout.engine import ABORTED, PROMPT_TOO_LONG
from rollout.protocols import MotifSpec, motif_response_format
from rollout.records import AdapterPayload, MotifTrajectory


class RunStalled(RuntimeError):
    """Steps in a row produced nothing to learn from: the run stops instead of spinning."""


def prompt_batch(problems: list[Problem], size: int, seed: int, index: int) -> list[Problem]:
    """Batch `index` of an endless sequence of `size` problems, reshuffled every epoch. A function of its index,
    so a resumed run draws exactly the batches the uninterrupted one would have."""
    per_epoch = len(problems) // size
    if per_epoch == 0:
        raise ValueError(f"only {len(problems)} problems, fewer than rollout.prompts_per_step={size}")
    epoch, position = divmod(index, per_epoch)
    order = list(problems)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[position * size : (position + 1) * size]


def reward_samples(trajectories: list[MotifTrajectory], batch: list[Problem], spec: MotifSpec) -> list[RewardSample]:
    return [
        RewardSample(
            question=batch[t.prompt_index].question,
            gold=batch[t.prompt_index].gold,
            response=t.first.text,
            finals=tuple(t.final_texts()),
            response_format=spec.response_format,
        )
        for t in trajectories
    ]


def attested(trajectories: list[MotifTrajectory], digest: str, continuation_digest: str) -> tuple[list[MotifTrajectory], Counter]:
    """The trajectories a step trains on: round 1 finished under the adapter just pushed (`digest`), and of its
    continuation chains only those whose every round finished under the expected policy (`continuation_digest`:
    the same adapter, or "" for the frozen base model). A failed or stale continuation says nothing about its
    round-1 sample, so it leaves the reward instead of counting as a wrong answer; a sample left with no chain
    is dropped."""
    kept, counts = [], Counter()
    for t in trajectories:
        if t.first.finish_reason == ABORTED:
            counts["failed"] += 1
            continue
        if t.first.adapter_digest != digest:
            counts["stale"] += 1
            continue
        if t.chains:
            good = [i for i, chain in enumerate(t.chains)
                    if all(c.finish_reason != ABORTED and c.adapter_digest == continuation_digest for c in chain)]
            counts["dropped_continuations"] += len(t.chains) - len(good)
            if not good:
                counts["failed"] += 1
                continue
            t = dataclasses.replace(t, chains=[t.chains[i] for i in good],
                                    round_prompts=[t.round_prompts[i] for i in good])
        kept.append(t)
    return kept, counts


def rollout_stats(trajectories: list[MotifTrajectory]) -> dict:
    firsts = [t.first for t in trajectories]
    finals = [c for t in trajectories for chain in t.chains for c in chain[-1:]]
    return {
        "response_length": sum(len(c.completion_ids) for c in firsts) / len(firsts),
        "truncated_rate": sum(c.finish_reason == "length" for c in firsts) / len(firsts),
        "prompts_too_long": sum(c.finish_reason == PROMPT_TOO_LONG for c in firsts + finals),
        "continuations": len(finals),
        "rollout/missing_progress": sum(t.missing_progress for t in trajectories),
    }


class HeldOutEval:
    """Evaluation during training: logs `eval/...` metrics and keeps each evaluation's samples."""

    def __init__(self, config: RunConfig, pool, spec: MotifSpec, run_dir: Path):
        self.every, self.pool, self.folder = config.eval.every, pool, run_dir / "eval"
        self.max_failed_fraction = config.eval.max_failed_fraction
        self.spec = eval_spec(config, spec)
        self.problems = eval_problems(config) if self.every else []
        self.history: list[tuple[int, float]] = []
        e, r = config.eval, config.rollout
        # Held-out pass@1 and reward/accuracy measure the same thing (one chain's final answer from a round-1
        # sample, at the training temperatures), on held-out and on training questions, when eval samples as
        # training does; their gap is then the generalisation gap.
        self.comparable = e.temperature is None and e.rounds in (None, r.rounds) and e.max_tokens in (None, r.max_tokens)
        self.train_accuracy: list[float] = []

    def track(self, metrics: dict) -> None:
        """Collect a step's training accuracy for the next evaluation's comparison."""
        if "reward/accuracy" in metrics:
            self.train_accuracy.append(metrics["reward/accuracy"])

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)

    def run(self, step: int) -> dict:
        # Every evaluation samples under the same seeds: the difference between two reflects the model more
        # than the dice.
        t0 = time.perf_counter()
        try:
            summary, samples = evaluate(self.pool, self.problems, self.spec, desc=f"eval step {step}", key=("eval",),
                                        max_failed_fraction=self.max_failed_fraction)
        except EvalFailed as e:
            tqdm.write(f"motif: {e}")
            return {"eval/failed": 1.0, "time_eval": time.perf_counter() - t0}
        write_eval(self.folder / f"step-{step}", summary, samples)
        self.history.append((step, summary["pass@1"]))
        n = summary["n"]
        interval = f" [{summary['pass@1_lo']:.3f}, {summary['pass@1_hi']:.3f}]" if summary["pass@1_lo"] is not None else ""
        tqdm.write(f"eval step {step} | pass@1 {summary['pass@1']:.3f}{interval} | maj@{n} {summary[f'maj@{n}']:.3f} "
                   f"| format {summary['format_rate']:.2f}")
        metrics = {f"eval/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        if self.comparable and len(self.train_accuracy) > 1 and summary["pass@1_stderr"] is not None:
            train = statistics.fmean(self.train_accuracy)
            gap = train - summary["pass@1"]
            # Both are estimates: the steps' accuracies vary from batch to batch, the evaluation over questions.
            stderr = math.hypot(statistics.stdev(self.train_accuracy) / math.sqrt(len(self.train_accuracy)),
                                summary["pass@1_stderr"])
            metrics.update({"eval/train_accuracy": train, "eval/generalization_gap": gap})
            if abs(gap) > 1.96 * stderr:
                tqdm.write(f"note: training accuracy over the last {len(self.train_accuracy)} steps ({train:.3f}) "
                           f"differs from held-out pass@1 by {gap:+.3f}, beyond both estimates' noise "
                           f"(95%: +-{1.96 * stderr:.3f}): training and held-out questions diverge")
        self.train_accuracy = []
        return {**metrics, "time_eval": time.perf_counter() - t0}


def write_samples(path: Path, step: int, batch: list[Problem], trajectories: list[MotifTrajectory],
                  totals: list[float], advantages: list[float]) -> None:
    """Every trajectory of a step: what was sampled, by which worker under which adapter, and what it earned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for t, total, advantage in zip(trajectories, totals, advantages):
            f.write(json.dumps({
                "step": step, "prompt": t.prompt_index, "question_id": batch[t.prompt_index].row,
                "response": t.first.text, "finals": t.final_texts(), "reward": total, "advantage": advantage,
                "worker": t.first.worker, "adapter_version": t.first.adapter_version,
                "adapter_digest": t.first.adapter_digest,
            }) + "\n")


class Run:
    """The actors and state of one training run; `train` drives it."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.checkpoints = Checkpoints(config.checkpoint.dir or run_dir / "checkpoints", config.checkpoint.keep)
        self.resume_hint = f"Resume with: motif train --config {run_dir / 'config.yaml'} --resume auto"
        self.pool = self.learner = self.group = None

    def start(self, model_path: str) -> None:
        from cluster.workers import reserve_placement, start_learner_group, start_rollout_pool

        self.group, worker_bundles, learner_bundles = reserve_placement(self.config)
        self.pool = start_rollout_pool(self.config, model_path, self.group, worker_bundles)
        self.learner = start_learner_group(self.config, model_path, self.resume_hint, self.group, learner_bundles)
        timeout = self.config.cluster.ready_timeout_s
        self.pool.wait_ready(timeout)
        self.learner.wait_ready(timeout)

    def push(self, version: int) -> None:
        digest, payload = self.learner.adapter_payload(version)
        self.pool.push(payload, digest, version)

    def save(self, step: int, state: dict) -> Path:
        import ray

        def write(folder: Path) -> None:
            self.learner.save_checkpoint(str(folder / "learner"))
            write_files(folder / "adapter", ray.get(self.pool.payload).files if self.pool.payload else {})

        return self.checkpoints.save(step, {**state, "adapter_digest": self.pool.digest}, write)

    def restore(self, folder: Path) -> dict:
        state = load_state(folder)
        self.learner.load_checkpoint(str(folder / "learner"))
        if state["adapter_version"]:
            payload = AdapterPayload.from_folder(state["adapter_version"], folder / "adapter")
            if payload.digest != state["adapter_digest"]:
                raise RuntimeError(f"checkpoint {folder}: adapter files do not match the digest recorded at save")
            self.pool.push(payload, payload.digest, payload.version)
        return state

    def stop(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actors in (self.pool, self.learner):
            if actors is not None:
                actors.shutdown()
        if self.group is not None:
            remove_placement_group(self.group)


def train(config: RunConfig, resume: str | None = None) -> Path:
    """Run GRPO steps up to `config.steps`, from scratch or from a checkpoint; returns the run folder."""
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
    rewards = build_rewards(config.reward.components, motif_response_format(r.rounds))
    spec = motif_spec(config, rewards)
    if config.reward.motivation:
        tqdm.write(f"system prompt with motivation:\n{spec.system_prompt}")
    estimator = ADVANTAGE_ESTIMATORS[config.learner.advantage_estimator]
    credit = CREDIT[config.learner.credit]
    log = None
    try:
        run.start(model_path)
        held_out = HeldOutEval(config, run.pool, spec, run_dir)
        state = {"step": 0, "adapter_version": 0, "metrics_offset": 0, "eval_history": []}
        if checkpoint is not None:
            state = run.restore(checkpoint)
            held_out.history = [tuple(h) for h in state["eval_history"]]
            tqdm.write(f"resumed from {checkpoint} at step {state['step']}")
        log = MetricsLog(run_dir, truncate_at=state["metrics_offset"] if checkpoint is not None else 0,
                         first_step=state["step"] + 1)
        first = state["step"] + 1
        if held_out.every and first == 1:
            log.log(0, held_out.run(0))
        version, unusable = state["adapter_version"], 0
        for step in tqdm(range(first, config.steps + 1), desc="train", unit="step", initial=first - 1, total=config.steps):
            batch = prompt_batch(problems, r.prompts_per_step, config.data.shuffle_seed, step - 1)
            t0 = time.perf_counter()
            run.pool.begin("train", step)
            sampled = run.pool.motif_rollout([p.question for p in batch], spec)
            t1 = time.perf_counter()
            continuation_digest = run.pool.digest if r.continuation_policy == "current" else ""
            trajectories, dropped = attested(sampled, run.pool.digest, continuation_digest)
            metrics = {**run.pool.take_counters(), "rollout/stale_dropped": float(dropped["stale"]),
                       "rollout/failed_samples": float(dropped["failed"]),
                       "rollout/dropped_continuations": float(dropped["dropped_continuations"])}
            samples = []
            if trajectories:
                totals, reward_metrics = score_samples(rewards, reward_samples(trajectories, batch, spec))
                advantages = estimator(
                    totals, [t.prompt_index for t in trajectories], norm_by_std=config.learner.norm_adv_by_std
                ).tolist()
                write_samples(run_dir / "samples" / f"step-{step}.jsonl", step, batch, trajectories, totals, advantages)
                samples = credit(trajectories, advantages, golds=[batch[t.prompt_index].gold for t in trajectories],
                                 estimator=estimator, norm_by_std=config.learner.norm_adv_by_std,
                                 continuation_temperature=r.continuation_temperature)
                metrics.update({**reward_metrics, **rollout_stats(trajectories)})
            t2 = time.perf_counter()
            if samples:
                unusable = 0
                if colocated_on_gpu(config):
                    run.pool.sleep()  # the learner on the same GPUs gets the engines' memory
                metrics.update(run.learner.train_step(samples))
                t3 = time.perf_counter()
                version = step
                run.push(version)
                metrics.update(time_learn=t3 - t2, time_sync=time.perf_counter() - t3)
            else:
                # Nothing to learn from (every prompt too long, or every generation failed): the run goes on.
                why = (f"all {len(batch)} prompts exceed rollout.max_model_len" if trajectories else
                       f"no usable sample ({dropped['failed']} failed, {dropped['stale']} stale)")
                tqdm.write(f"step {step}: skipped, {why}")
                metrics["skipped_step"] = 1.0
                unusable += 1
                if unusable >= config.max_skipped_steps:
                    log.log(step, metrics)
                    raise RunStalled(f"{unusable} steps in a row had nothing to learn from (step {step}: {why}; "
                                     f"max_skipped_steps={config.max_skipped_steps}); the run stops. {run.resume_hint}")
            metrics.update(adapter_version=version, time_rollout=t1 - t0, time_reward=t2 - t1)
            held_out.track(metrics)
            if held_out.due(step, config.steps):
                metrics.update(held_out.run(step))
            log.log(step, metrics)
            if step == config.steps or (config.checkpoint.every and step % config.checkpoint.every == 0):
                saved = run.save(step, {"step": step, "adapter_version": version, "data_position": step,
                                        "metrics_offset": log.offset(), "eval_history": held_out.history,
                                        "run_id": run_id, "config": resume_fields(settings)})
                tqdm.write(f"checkpoint: {saved}")
        final = run_dir / "adapter"
        run.learner.export_adapter(str(final))
        plot = plot_run(run_dir)
        if len(held_out.history) > 1:
            (s0, before), (s1, after) = held_out.history[0], held_out.history[-1]
            tqdm.write(f"held-out pass@1: {before:.3f} at step {s0} -> {after:.3f} at step {s1}")
        tqdm.write(f"final adapter: {final}\nmetrics: {log.path}")
        tqdm.write(f"run folder: {run_dir} | plot: {plot} | tensorboard --logdir {log.tensorboard_dir}")
    finally:
        if log is not None:
            log.close()
        run.stop()
        for reward in rewards:
            reward.close()
    return run_dir
