"""Shared fixtures: a tiny offline model and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Ray reads this at import: its servers then listen on loopback only (see cluster.workers).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = Path(REPO) / "cluster" / "tasks" / "datasets"  # the project's own copies: a clone has no ../shared


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from learner.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical CPUs: the rollout and learner actors take turns on the real cores, and tests that start
    # more actors must not wait for resources.
    ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def rollout_worker(ray_session, tiny_model):
    from rollout.actor import RolloutWorker

    return RolloutWorker.options(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}}).remote(
        tiny_model, max_lora_rank=8, max_model_len=512, kv_cache_bytes=32 << 20, seed=0, dtype="float32"
    )


@pytest.fixture(scope="session")
def rollout_pool(rollout_worker):
    """The session's worker as a pool of one: the MOTIF protocol runs through the pool, as in training."""
    from rollout.pool import RolloutPool

    return RolloutPool(lambda index: rollout_worker, 1)


@pytest.fixture(scope="session")
def demo_warm_start(tmp_path_factory):
    """The demo's warm start (the tiny model SFT'd on the toy task), built once for the session: (model folder,
    cache dir)."""
    import dataclasses

    from cluster.config import load_config
    from cluster.tasks.warm_start import ensure_toy_warm_start

    config = load_config("cluster/configs/demo.yaml")
    cache = tmp_path_factory.mktemp("warm-start")
    settings = dataclasses.replace(config.model.warm_start, dir=str(cache))
    return str(ensure_toy_warm_start(settings, config.data.toy)), cache

