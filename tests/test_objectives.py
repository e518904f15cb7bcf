"""Objectives are pure functions of tensors, checked against closed forms; the learner runs them through
DeepSpeed and reports exactly the closed form at one and two ranks, a rank with no sample included."""

from __future__ import annotations

import math

import pytest
import torch

from cluster.config import load_config
from learner.batching import plan_batch
from learner.config import LearnerConfig
from learner.objectives import OBJECTIVES
from learner.objectives.clipped import clipped_loss
from learner.objectives.sft import sft_loss
from learner.records import TrainSample

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -9.0]])
OLD = torch.tensor([[-1.1, -3.0, -0.5], [-0.3, -0.5, -9.0]])
REF = torch.tensor([[-1.2, -2.0, -0.4], [-0.1, -1.5, -9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([[1.5], [-0.5]])


def closed_form_clipped(clip, kl_coef, normalizer):
    """Token by token in float64, written out from the definitions."""
    total, clipped_tokens, kl_sum = 0.0, 0.0, 0.0
    for b in range(2):
        a = float(ADV[b, 0])
        for t in range(3):
            if not MASK[b, t]:
                continue
            ratio = math.exp(float(LOGP[b, t]) - float(OLD[b, t]))
            bounded = min(max(ratio, 1 - clip), 1 + clip)
            surrogate = max(-a * ratio, -a * bounded)
            d = float(REF[b, t]) - float(LOGP[b, t])
            kl = math.exp(d) - d - 1
            total += surrogate + kl_coef * kl
            clipped_tokens += -a * bounded > -a * ratio
            kl_sum += kl
    return total / normalizer, clipped_tokens, kl_sum


def test_clipped_loss_matches_the_closed_form():
    loss, metrics = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, ref_logprobs=REF, kl_coef=0.1,
                                 clip_low=0.2, clip_high=0.2, normalizer=5)
    expected, clipped_tokens, kl_sum = closed_form_clipped(0.2, 0.1, 5)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["clip_frac"]) == clipped_tokens == 2  # ratio e^1 under A>0, e^-1 under A<0: the bound binds
    assert float(metrics["kl"]) == pytest.approx(kl_sum, abs=1e-6)
    unreferenced, metrics = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, normalizer=5)
    assert float(unreferenced) == pytest.approx(closed_form_clipped(0.2, 0.0, 5)[0], abs=1e-6)
    assert "kl" not in metrics


def test_token_mean_over_micro_batches_is_the_mean_over_the_mini_batch():
    whole, _ = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, normalizer=5)
    parts = [clipped_loss(LOGP[i : i + 1], MASK[i : i + 1], old_logprobs=OLD[i : i + 1], advantages=ADV[i : i + 1],
                          normalizer=5)[0] for i in range(2)]
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-7)


def test_sft_loss_is_the_masked_token_mean_nll():
    loss, metrics = sft_loss(LOGP, MASK, normalizer=5)
    assert float(loss) == pytest.approx((1.0 + 2.0 + 0.5 + 0.3 + 1.5) / 5) and metrics == {}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_returns_the_metrics_it_declares(name):
    """The declared keys are what every rank reduces: a rank with no sample reports the same ones."""
    objective = OBJECTIVES[name]
    for config in (LearnerConfig(kl_coef=0.0), LearnerConfig(kl_coef=0.1)):
        needs = objective.needs(config)
        assert needs <= {"old_logprobs", "ref_logprobs", "advantages"}
        inputs = {"old_logprobs": OLD, "ref_logprobs": REF, "advantages": ADV}
        _, metrics = objective.loss(LOGP, MASK, normalizer=5, **{k: inputs[k] for k in needs},
                                    **objective.options(config))
        assert tuple(sorted(metrics)) == tuple(sorted(objective.metrics(config)))


def samples() -> list[TrainSample]:
    return [TrainSample([5, 6, 7], [8, 9, 10, 11], 1.5), TrainSample([5, 12], [13, 14], -0.5),
            TrainSample([15, 16, 17, 18], [19, 20, 21], 0.25), TrainSample([22], [23], -1.25)]


def closed_form_first_step(batch: list[TrainSample]) -> float:
    """At the first step the policy is the sampling policy (ratio 1) and, the adapter's B being zero, the
    reference too (KL 0): the token-mean loss is minus the token-weighted mean advantage."""
    return -sum(s.advantage * len(s.completion_ids) for s in batch) / sum(len(s.completion_ids) for s in batch)


@pytest.mark.parametrize("ranks", [1, 2])
def test_learner_reports_the_closed_form_through_deepspeed(ray_session, tiny_model, ranks):
    """Two mini-batches (an old-logprob pass) and a reference pass at learning rate 0; then a one-sample batch,
    which leaves the second rank with no sample at all (it used to all-reduce other metric names)."""
    import ray

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", [
        f"learner.num_ranks={ranks}", "learner.mini_batch_size=2", "learner.micro_batch_size=1",
        "learner.learning_rate=0.0", "learner.kl_coef=0.1", "cluster.learner_threads=1"])
    group = start_learner_group(config, tiny_model, "")
    try:
        group.wait_ready(300)
        for batch in (samples(), samples()[:1]):
            local, plans = plan_batch(batch, ranks, 2, 1)
            reports = ray.get([rank.train_step.remote(part, plan) for rank, part, plan
                               in zip(group.ranks, local, plans)], timeout=300)
            for metrics in reports:
                assert metrics["loss"] == pytest.approx(closed_form_first_step(batch), abs=1e-6)
                assert metrics["kl"] == pytest.approx(0.0, abs=1e-7) and metrics["clip_frac"] == 0.0
                assert metrics["train_tokens"] == sum(len(s.completion_ids) for s in batch)
    finally:
        group.shutdown()
