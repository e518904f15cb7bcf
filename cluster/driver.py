"""The training loop: prompts -> MOTIF rollout -> rewards -> GRPO update -> adapter push -> metrics."""

from __future__ import annotations

import itertools
import math
import os
import random
import shutil
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.config import RunConfig, to_dict
from cluster.data import Problem, load_problems
from cluster.metrics import MetricsLog
from learner.losses import ADVANTAGE_ESTIMATORS
from learner.records import TrainSample
from rewards import RewardSample, build_rewards, score_samples
from rewards.motivation import motivated_system_prompt
from rewards.registry import Reward
from rollout.engine import PROMPT_TOO_LONG
from rollout.protocols import SYSTEM_PROMPT, MotifSpec, motif_response_format
from rollout.records import MotifTrajectory, SamplingSpec


def resolve_model(config: RunConfig) -> str:
    if config.model.path != "tiny":
        return config.model.path
    from learner.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model(Path(config.model.tiny_model_dir).resolve()))


def motif_spec(config: RunConfig, rewards: list[Reward]) -> MotifSpec:
    r = config.rollout
    system_prompt = motivated_system_prompt(SYSTEM_PROMPT, rewards) if config.reward.motivation else SYSTEM_PROMPT
    return MotifSpec(
        samples_per_prompt=r.samples_per_prompt,
        continuations=r.continuations,
        rounds=r.rounds,
        first_round=SamplingSpec(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens),
        continuation=SamplingSpec(temperature=r.continuation_temperature, top_p=r.top_p, max_tokens=r.max_tokens),
        continuation_policy=r.continuation_policy,
        system_prompt=system_prompt,
    )


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
    }


def start_ray(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "VLLM_", "TRANSFORMERS_"))}
    num_cpus = None
    if config.cluster.address is None:
        # A local Ray offers at least the CPUs the run's actors ask for: on a small machine they take turns
        # on the real cores instead of waiting forever to be placed.
        requested = config.rollout.num_cpus + config.cluster.learner_num_cpus + sum(
            t.num_cpus for t in config.reward.components if t.name == "reward_model"
        )
        num_cpus = max(os.cpu_count() or 1, math.ceil(requested))
    ray.init(address=config.cluster.address, num_cpus=num_cpus, runtime_env={"env_vars": env},
             include_dashboard=False, log_to_driver=True)


def train(config: RunConfig) -> Path:
    """Run the configured number of GRPO steps; returns the run folder."""
    import ray

    from learner.actor import LearnerWorker
    from rollout.actor import RolloutWorker

    run_dir = Path(config.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    problems, report = load_problems(config.data)
    tqdm.write(f"data: {report.summary()}")
    model_path = resolve_model(config)
    start_ray(config)

    threads = {"OMP_NUM_THREADS": str(os.cpu_count())}
    r = config.rollout
    rollout = RolloutWorker.options(num_cpus=r.num_cpus, runtime_env={"env_vars": threads}).remote(
        model_path,
        max_lora_rank=config.learner.lora_rank,
        max_model_len=r.max_model_len,
        kv_cache_bytes=r.kv_cache_mb << 20,
        dtype=r.dtype,
        seed=r.seed,
    )
    learner = LearnerWorker.options(num_cpus=config.cluster.learner_num_cpus, runtime_env={"env_vars": threads}).remote(
        model_path, config.learner, temperature=r.temperature, num_threads=config.cluster.learner_threads or os.cpu_count()
    )
    rewards = build_rewards(config.reward.components, motif_response_format(r.rounds))
    spec = motif_spec(config, rewards)
    if config.reward.motivation:
        tqdm.write(f"system prompt with motivation:\n{spec.system_prompt}")
    estimator = ADVANTAGE_ESTIMATORS[config.learner.advantage_estimator]
    batches = prompt_batches(problems, r.prompts_per_step, config.data.shuffle_seed)
    log = MetricsLog(run_dir)
    adapters = run_dir / "adapters"
    adapters.mkdir(exist_ok=True)
    try:
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
            learn_metrics = ray.get(learner.train_step.remote(samples))
            t3 = time.perf_counter()
            path = ray.get(learner.export_adapter.remote(str(adapters / f"v{step}")))
            version = ray.get(rollout.load_adapter.remote(path, step))
            shutil.rmtree(adapters / f"v{step - 1}", ignore_errors=True)
            t4 = time.perf_counter()
            log.log(step, {
                **reward_metrics, **learn_metrics, **rollout_stats(trajectories),
                "adapter_version": version,
                "time_rollout": t1 - t0, "time_reward": t2 - t1, "time_learn": t3 - t2, "time_sync": t4 - t3,
            })
        final = run_dir / "adapter"
        ray.get(learner.export_adapter.remote(str(final)))
        tqdm.write(f"final adapter: {final}\nmetrics: {log.path}")
    finally:
        log.close()
        for reward in rewards:
            reward.close()
    return run_dir
