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


@pytest.mark.parametrize("rounds, credit", [(1, "every_round"), (1, "first_round"), (2, "every_round")])
def test_score_and_credit_under_each_protocol_and_credit(tmp_path, rounds, credit):
    """The default credit on one-turn episodes (rollout.rounds=1): the roots, as first_round trains them."""
    from cluster.loop.step import score_and_credit
    from cluster.spec import rollout_spec
    from cluster.tasks.data import Problem
    from learner.advantages import ADVANTAGE_ESTIMATORS
    from learner.credit import CREDIT, SCORES_ANSWERS
    from rewards import RewardTerm, build_rewards
    from rollout.protocols import PROTOCOLS, protocol_name
    from rollout.records import Completion

    config = load_config("tests/configs/smoke.yaml", [f"rollout.rounds={rounds}", f"learner.credit={credit}"])
    rewards = build_rewards([RewardTerm("format")], "reasoning_answer" if rounds == 1 else "reasoning_progress")
    spec = rollout_spec(config, rewards)
    good, bad = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>", "no tags"

    def generate(conversations, sampling, use_adapter):
        return [[Completion([1], [2, 3], good if j % 2 else bad, [0.0, 0.0], "stop", 0) for j in range(sampling.n)]
                for _ in conversations]

    episodes = PROTOCOLS[protocol_name(None, rounds)].rollout(generate, ["q0", "q1"], spec)
    parts = StepParts(config, None, None, protocol=PROTOCOLS[protocol_name(None, rounds)], spec=spec, rewards=rewards,
                      estimator=ADVANTAGE_ESTIMATORS["grpo"], credit=CREDIT[credit],
                      scores_answers=credit in SCORES_ANSWERS, samples_dir=tmp_path, colocated=False)
    samples, metrics = score_and_credit(parts, [Problem("q0", "4", 0), Problem("q1", "4", 1)], episodes, step=1)
    roots = 2 * config.rollout.samples_per_prompt
    chains = roots * config.rollout.continuations if rounds > 1 and credit == "every_round" else 0
    assert len(samples) == roots + chains
    assert (tmp_path / "step-1.jsonl").exists() and "reward/format" in metrics

