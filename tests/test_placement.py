"""Placement: one bundle per actor or shared bundles, and clear errors for resources the cluster lacks."""

from __future__ import annotations

import pytest

from cluster.config import load_config
from cluster.workers import PlacementError, placement_bundles, reserve_placement

SMOKE = "tests/configs/smoke.yaml"


def test_separate_and_colocated_bundles():
    config = load_config(SMOKE, ["rollout.num_workers=3", "learner.num_ranks=2", "rollout.num_cpus=2",
                                 "cluster.learner_num_cpus=1", "rollout.num_gpus=0.5", "cluster.learner_num_gpus=0.5"])
    bundles, workers, learners = placement_bundles(config)
    assert bundles == [{"CPU": 2, "GPU": 0.5}] * 3 + [{"CPU": 1, "GPU": 0.5}] * 2
    assert workers == [0, 1, 2] and learners == [3, 4]

    config.cluster.placement = "colocate"
    bundles, workers, learners = placement_bundles(config)
    assert bundles == [{"CPU": 3, "GPU": 1.0}] * 2 + [{"CPU": 2, "GPU": 0.5}]
    assert workers == [0, 1, 2] and learners == [0, 1]


def test_placement_strategy_is_one_of_rays():
    from cluster.config import ConfigError

    assert load_config(SMOKE, ["cluster.placement_strategy=STRICT_SPREAD"]).cluster.placement_strategy == "STRICT_SPREAD"
    with pytest.raises(ConfigError, match="cluster.placement_strategy must be one of PACK, SPREAD, STRICT_PACK"):
        load_config(SMOKE, ["cluster.placement_strategy=spread"])


def test_gpus_asked_of_a_machine_without_cuda_is_an_error(ray_session):
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    config = load_config(SMOKE, ["rollout.num_gpus=1"])
    with pytest.raises(PlacementError, match=r"CUDA requested \(rollout.num_gpus=1.0"):
        reserve_placement(config)


def test_resources_the_cluster_lacks_fail_after_the_timeout_naming_them(ray_session):
    config = load_config(SMOKE, ["rollout.num_cpus=1000", "cluster.ready_timeout_s=2"])
    with pytest.raises(PlacementError, match=r"within cluster.ready_timeout_s=2.*CPU 1001.*the cluster has CPU 8"):
        reserve_placement(config)


def test_lora_ranks_round_up_to_what_vllm_supports():
    from rollout.engine import vllm_lora_rank

    assert [vllm_lora_rank(r) for r in (1, 2, 4, 8, 9, 64, 300, 512)] == [1, 8, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="above the largest"):
        vllm_lora_rank(513)
