"""The training loop: prompts -> MOTIF rollout -> rewards -> GRPO update -> adapter push -> metrics, with
held-out evaluation at step 0, every `eval.every` steps and at the end."""

from __future__ import annotations

import itertools
import random
import shutil
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.config import RunConfig, to_dict
from cluster.data import Problem, load_problems
from cluster.evaluation import eval_problems, eval_spec, evaluate, write_eval
from cluster.metrics import MetricsLog
from cluster.models import resolve_model
from cluster.report import plot_run
from cluster.spec import motif_spec
from cluster.workers import actor_threads, start_ray, start_rollout_worker
from learner.losses import ADVANTAGE_ESTIMATORS
from learner.records import TrainSample
from rewards import RewardSample, build_rewards, score_samples
from rollout.engine import PROMPT_TOO_LONG
from rollout.protocols import MotifSpec, motif_response_format
from rollout.records import MotifTrajectory


def prompt_batches(problems: list[Problem], size: int, seed: int):
    """Endless batches of `size` problems, reshuffled every epoch."""
    rng = random.Random(seed)
    for epoch in itertools.count():
        order = list(problems)
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield order[i : i + size]
        if len(order) < size:
            raise ValueError(f"only {len(order)} problems, fewer than rollout.prompts_per_step={size}")


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

    def __init__(self, config: RunConfig, rollout, spec: MotifSpec, run_dir: Path):
        self.every, self.rollout, self.folder = config.eval.every, rollout, run_dir / "eval"
        self.spec = eval_spec(config, spec)
        self.problems = eval_problems(config) if self.every else []
        self.history: list[tuple[int, float]] = []

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)

    def run(self, step: int) -> dict:
        t0 = time.perf_counter()
        summary, samples = evaluate(self.rollout, self.problems, self.spec, desc=f"eval step {step}")
        write_eval(self.folder / f"step-{step}", summary, samples)
        self.history.append((step, summary["pass@1"]))
        n = summary["n"]
        tqdm.write(f"eval step {step} | pass@1 {summary['pass@1']:.3f} | maj@{n} {summary[f'maj@{n}']:.3f} "
                   f"| format {summary['format_rate']:.2f}")
        metrics = {f"eval/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        return {**metrics, "time_eval": time.perf_counter() - t0}


def train(config: RunConfig) -> Path:
    """Run the configured number of GRPO steps; returns the run folder."""
    import ray

    from learner.actor import LearnerWorker

    run_dir = Path(config.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    problems, report = load_problems(config.data)
    tqdm.write(f"data: {report.summary()}")
    model_path = resolve_model(config.model, config.data.toy)
    start_ray(config)

    r = config.rollout
    rollout = start_rollout_worker(config, model_path)
    learner = LearnerWorker.options(num_cpus=config.cluster.learner_num_cpus, runtime_env=actor_threads()).remote(
        model_path, config.learner, temperature=r.temperature, num_threads=config.cluster.learner_threads
    )
    rewards = build_rewards(config.reward.components, motif_response_format(r.rounds))
    spec = motif_spec(config, rewards)
    if config.reward.motivation:
        tqdm.write(f"system prompt with motivation:\n{spec.system_prompt}")
    held_out = HeldOutEval(config, rollout, spec, run_dir)
    estimator = ADVANTAGE_ESTIMATORS[config.learner.advantage_estimator]
    batches = prompt_batches(problems, r.prompts_per_step, config.data.shuffle_seed)
    log = MetricsLog(run_dir)
    adapters = run_dir / "adapters"
    adapters.mkdir(exist_ok=True)
    version = 0
    try:
        if held_out.every:
            log.log(0, held_out.run(0))
        for step in tqdm(range(1, config.steps + 1), desc="train", unit="step"):
            batch = next(batches)
            t0 = time.perf_counter()
            trajectories = ray.get(rollout.motif_rollout.remote([p.question for p in batch], spec))
            t1 = time.perf_counter()
            totals, reward_metrics = score_samples(rewards, reward_samples(trajectories, batch, spec))
            advantages = estimator(
                totals, [t.prompt_index for t in trajectories], norm_by_std=config.learner.norm_adv_by_std
            ).tolist()
            samples = [
                TrainSample(t.first.prompt_ids, t.first.completion_ids, a)
                for t, a in zip(trajectories, advantages)
                if t.first.completion_ids
            ]
            t2 = time.perf_counter()
            metrics = {**reward_metrics, **rollout_stats(trajectories)}
            if samples:
                metrics.update(ray.get(learner.train_step.remote(samples)))
                t3 = time.perf_counter()
                previous, version = version, step
                path = ray.get(learner.export_adapter.remote(str(adapters / f"v{version}")))
                ray.get(rollout.load_adapter.remote(path, version))
                shutil.rmtree(adapters / f"v{previous}", ignore_errors=True)
                metrics.update(time_learn=t3 - t2, time_sync=time.perf_counter() - t3)
            else:
                # Every prompt of the batch was too long to sample from: nothing to learn, the run goes on.
                tqdm.write(f"step {step}: skipped, all {len(batch)} prompts exceed rollout.max_model_len")
                metrics["skipped_step"] = 1.0
            metrics.update(adapter_version=version, time_rollout=t1 - t0, time_reward=t2 - t1)
            if held_out.due(step, config.steps):
                metrics.update(held_out.run(step))
            log.log(step, metrics)
        final = run_dir / "adapter"
        ray.get(learner.export_adapter.remote(str(final)))
        plot = plot_run(run_dir)
        if len(held_out.history) > 1:
            (s0, before), (s1, after) = held_out.history[0], held_out.history[-1]
            tqdm.write(f"held-out pass@1: {before:.3f} at step {s0} -> {after:.3f} at step {s1}")
        tqdm.write(f"run folder: {run_dir}\nfinal adapter: {final}\nmetrics: {log.path}\nplot: {plot}")
    finally:
        log.close()
        for reward in rewards:
            reward.close()
    return run_dir
