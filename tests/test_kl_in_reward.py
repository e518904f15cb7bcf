"""KL in the reward (learner.kl_in_reward_coef): each episode's reward less coef times the summed per-token KL
estimate, policy against reference, over the tokens the step trains of it, before the group normalisation. The
step is driven on the scripted pool of tests/test_mask_truncated.py with a learner stand-in whose KL is scripted;
the learner's own KL is checked against a float64 HF + PEFT forward with the adapter on and off."""

from __future__ import annotations

import json
import math
import random

import pytest

from cluster.config import load_config
from learner.records import TrainSample
from tests.test_dynamic_sampling import Learner
from tests.test_mask_truncated import grpo, step

COEF = 0.5


class KLLearner(Learner):
    """Sample j of a request (its third completion id) has KL 0.25 (j + 1) if a root, 0.1 (j + 1) if a
    continuation (first id 3)."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def sequence_kl(self, samples, estimator):
        self.asked.append((list(samples), estimator))
        return [(0.1 if s.completion_ids[0] == 3 else 0.25) * (s.completion_ids[2] + 1) for s in samples]


def records(path):
    return [json.loads(line) for line in (path / "step-1.jsonl").read_text().splitlines()]


def test_each_reward_is_lowered_by_its_kl_before_the_group_normalisation(tmp_path):
    learner = KLLearner()
    result, trained = step(tmp_path, lambda round_index, j: False, f"learner.kl_in_reward_coef={COEF}",
                           "learner.kl_estimator=k1", learner=learner)
    (asked, estimator), = learner.asked
    assert estimator == "k1" and asked == [TrainSample(s.prompt_ids, s.completion_ids, 0.0, s.temperature, s.episode,
                                                       s.behaviour_logprobs) for s in trained]
    penalties = [COEF * 0.25 * (j + 1) for j in range(4)]
    rewards = [r - p for r, p in zip([0, 1, 0, 1], penalties)]  # format: the odd samples are well formed
    assert [s.advantage for s in trained] == pytest.approx(grpo(rewards) * 2)
    assert result.metrics["reward/kl_penalty"] == pytest.approx(sum(penalties) / 4)
    assert result.metrics["reward/format"] == 0.5  # the reward figures are before the penalty
    assert [(r["reward"], r["kl_penalty"]) for r in records(tmp_path)] == list(zip([0, 1, 0, 1], penalties)) * 2


def test_kl_is_taken_over_the_trained_turns_of_each_episode(tmp_path):
    """Under every_round an episode's penalty sums its root's and its chains'; a turn left out of the loss
    (learner.mask_truncated) is left out of the KL too."""
    learner = KLLearner()
    result, trained = step(tmp_path, lambda round_index, j: (round_index, j) == (2, 0), "learner.mask_truncated=true",
                           f"learner.kl_in_reward_coef={COEF}", rounds=2, credit="every_round", learner=learner)
    (asked, _), = learner.asked
    assert len(asked) == len(trained) == 8 + 8 and not any(s.truncated for s in asked)
    # Root j (KL 0.25 (j + 1)) and its one chain kept, the continuation j = 1 (KL 0.2).
    penalties = [COEF * (0.25 * (j + 1) + 0.2) for j in range(4)]
    roots = [s for s in trained if s.completion_ids[0] == 2]
    assert [s.advantage for s in roots] == pytest.approx(grpo([r - p for r, p in zip([0, 1, 0, 1], penalties)]) * 2)
    assert result.metrics["reward/kl_penalty"] == pytest.approx(sum(penalties) / 4)


def test_no_kl_pass_when_the_coefficient_is_zero(tmp_path):
    # The plain stand-in has no sequence_kl: a call would fail the step.
    result, trained = step(tmp_path, lambda round_index, j: False)
    assert "reward/kl_penalty" not in result.metrics and "kl_penalty" not in records(tmp_path)[0]
    assert [s.advantage for s in trained] == pytest.approx(grpo([0, 1, 0, 1]) * 2)


def test_the_group_maps_every_ranks_share_back_to_its_sample(ray_session):
    from learner.group import LearnerGroup

    @ray_session.remote(num_cpus=0)
    class EchoRank:
        def sequence_kl(self, samples, estimator, plan):
            assert sorted(i for micros, _ in plan for micro in micros for i in micro) == list(range(len(samples)))
            return [float(s.completion_ids[0]) for s in samples]

    group = LearnerGroup(lambda rank: EchoRank.remote(), 3, 8, 2, "")
    try:
        # Turns of one episode share its number; lengths differ, so the balance shuffles them between ranks.
        samples = [TrainSample([1], [100 + i] * (1 + 5 * (i % 3)), 0.0, episode=i // 3) for i in range(8)]
        assert group.sequence_kl(samples, "k3") == [100.0 + i for i in range(8)]
    finally:
        group.shutdown()


def hf_token_logprobs(model, sample, temperature):
    import torch

    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[len(sample.prompt_ids) - 1 :].tolist()


def oracle(policy, ref, estimator):
    """Schulman's estimators by hand, d = ref - policy, summed over the tokens."""
    d = [r - p for p, r in zip(policy, ref)]
    return sum({"k1": -x, "k2": x * x / 2, "k3": math.exp(x) - x - 1}[estimator] for x in d)


def test_learner_kl_is_the_estimator_on_hf_peft_logprobs(ray_session, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", ["learner.learning_rate=0.01", "learner.max_grad_norm=1.0e+6",
                                                      "learner.kl_coef=0", "cluster.learner_threads=2"])
    rng = random.Random(0)
    # Round 1 at the learner's temperature (None: 1) and continuation rounds at 0.8, as every_round trains them.
    samples = [TrainSample([rng.randrange(3, 500) for _ in range(rng.randint(3, 9))],
                           [rng.randrange(3, 500) for _ in range(rng.randint(2, 12))], rng.choice([-10.0, 10.0]),
                           None if i % 2 else 0.8, episode=i // 2) for i in range(6)]
    estimators = ("k1", "k2", "k3")
    group = start_learner_group(config, tiny_model, "")
    try:
        group.wait_ready(300)
        fresh = {e: group.sequence_kl(samples, e) for e in estimators}
        group.train_step(samples, "0:1")
        moved = {e: group.sequence_kl(samples, e) for e in estimators}
        group.export_adapter(str(tmp_path / "adapter"))
    finally:
        group.shutdown()
    # Step 1: LoRA's B is 0, so the policy is the reference, exactly.
    assert all(value == 0.0 for values in fresh.values() for value in values)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    for i, s in enumerate(samples):
        temperature = s.temperature or config.rollout.temperature
        policy = hf_token_logprobs(model, s, temperature)
        with model.disable_adapter():
            ref = hf_token_logprobs(model, s, temperature)
        for e in estimators:
            expected = oracle(policy, ref, e)
            assert moved[e][i] == pytest.approx(expected, rel=1e-3, abs=1e-6), (i, e)
    assert sum(abs(v) for v in moved["k1"]) > 1e-2, "the step did not move the policy from the reference"
