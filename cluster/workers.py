"""Ray and the actors a run starts: the local (or joined) Ray cluster and the vLLM rollout worker."""

from __future__ import annotations

import math
import os

from cluster.config import RunConfig


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


def actor_threads() -> dict:
    return {"env_vars": {"OMP_NUM_THREADS": str(os.cpu_count())}}


def start_rollout_worker(config: RunConfig, model_path: str):
    from rollout.actor import RolloutWorker

    r = config.rollout
    return RolloutWorker.options(num_cpus=r.num_cpus, runtime_env=actor_threads()).remote(
        model_path,
        max_lora_rank=config.learner.lora_rank,
        max_model_len=r.max_model_len,
        kv_cache_bytes=r.kv_cache_mb << 20,
        dtype=r.dtype,
        seed=r.seed,
    )
