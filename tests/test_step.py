"""A step's train -> push, in order: colocated on GPUs, the engines sleep through the update and the learner hands
its cached memory back before they wake to load the new adapter. Recorded on stand-ins for the pool and the
learner: what is under test is the order of the calls, which a CPU run cannot show (no sleep mode, no CUDA
cache); the real calls are GRPOLearner.release_memory (torch.cuda.empty_cache) and the engines' vLLM sleep/wake_up."""

from __future__ import annotations

import pytest

from cluster.config import load_config
from cluster.loop.step import StepParts, train_and_push
from learner.records import TrainSample


class Recorder:
    def __init__(self, calls: list, name: str):
        self.calls, self.name = calls, name

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.calls.append(f"{self.name}.{method}")
            if method == "train_step":
                return {"loss": 0.5}
            if method == "adapter_payload":
                return "digest", "payload"
            return None

        return call


@pytest.mark.parametrize("colocated", [True, False])
def test_the_learner_releases_memory_before_the_engines_wake(colocated, tmp_path):
    calls: list[str] = []
    parts = StepParts(load_config("tests/configs/smoke.yaml"), Recorder(calls, "pool"), Recorder(calls, "learner"), protocol=None,
                      spec=None, rewards=[], estimator=None, credit=None, scores_answers=False, samples_dir=tmp_path, colocated=colocated)
    metrics = train_and_push(parts, [TrainSample([1], [2], 1.0)], version=3)
    if colocated:
        assert calls == ["pool.sleep", "learner.train_step", "learner.release_memory", "learner.adapter_payload",
                         "pool.push"]
    else:
        assert calls == ["learner.train_step", "learner.adapter_payload", "pool.push"]
    assert metrics["loss"] == 0.5 and metrics["time_learn"] >= 0 and metrics["time_sync"] >= 0
