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
from learner.objectives.aggregation import MiniBatchSize
from learner.objectives.clipped import clipped_loss
from learner.objectives.sft import sft_loss
from learner.records import TrainSample

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -9.0]])
OLD = torch.tensor([[-1.1, -3.0, -0.5], [-0.3, -0.5, -9.0]])
REF = torch.tensor([[-1.2, -2.0, -0.4], [-0.1, -1.5, -9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([[1.5], [-0.5]])
# vLLM's logprobs: old - behaviour is 1 (ratio e, above a cap of 2), 0, 0.5 / 0, -0.2 (masked: 3)
BEHAVIOUR = OLD - torch.tensor([[1.0, 0.0, 0.5], [0.0, -0.2, 3.0]])
SIZE = MiniBatchSize(tokens=5, sequences=2)


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
                                 clip_low=0.2, clip_high=0.2, size=SIZE)
    expected, clipped_tokens, kl_sum = closed_form_clipped(0.2, 0.1, 5)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["clip_frac"]) == clipped_tokens == 2  # ratio e^1 under A>0, e^-1 under A<0: the bound binds
    assert float(metrics["kl"]) == pytest.approx(kl_sum, abs=1e-6)
    unreferenced, metrics = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, size=SIZE)
    assert float(unreferenced) == pytest.approx(closed_form_clipped(0.2, 0.0, 5)[0], abs=1e-6)
    assert "kl" not in metrics


def test_token_mean_over_micro_batches_is_the_mean_over_the_mini_batch():
    whole, _ = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, size=SIZE)
    parts = [clipped_loss(LOGP[i : i + 1], MASK[i : i + 1], old_logprobs=OLD[i : i + 1], advantages=ADV[i : i + 1],
                          size=SIZE)[0] for i in range(2)]
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-7)


def test_sft_loss_is_the_masked_token_mean_nll():
    loss, metrics = sft_loss(LOGP, MASK, size=SIZE)
    assert float(loss) == pytest.approx((1.0 + 2.0 + 0.5 + 0.3 + 1.5) / 5) and metrics == {}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_returns_the_metrics_it_declares(name):
    """The declared keys are what every rank reduces: a rank with no sample reports the same ones."""
    objective = OBJECTIVES[name]
    for config in (LearnerConfig(kl_coef=0.0), LearnerConfig(kl_coef=0.1), LearnerConfig(kl_coef=0.1, tis_cap=2.0)):
        needs = objective.needs(config)
        assert needs <= {"old_logprobs", "ref_logprobs", "advantages", "behaviour_logprobs"}
        inputs = {"old_logprobs": OLD, "ref_logprobs": REF, "advantages": ADV, "behaviour_logprobs": BEHAVIOUR}
        _, metrics = objective.loss(LOGP, MASK, size=SIZE, **{k: inputs[k] for k in needs},
                                    **objective.options(config))
        assert tuple(sorted(metrics)) == tuple(sorted(objective.metrics(config)))


def samples() -> list[TrainSample]:
    return [TrainSample([5, 6, 7], [8, 9, 10, 11], 1.5), TrainSample([5, 12], [13, 14], -0.5),
            TrainSample([15, 16, 17, 18], [19, 20, 21], 0.25), TrainSample([22], [23], -1.25)]


SCALE_TOKENS = 6


def closed_form_first_step(batch: list[TrainSample], aggregation: str = "token_mean") -> float:
    """At the first step the policy is the sampling policy (ratio 1) and, the adapter's B being zero, the
    reference too (KL 0): each token's loss is -A of its sample. The reported loss is the token-weighted mean
    of the mini-batches' losses (mini-batches of 2 here)."""
    minis = [batch[i : i + 2] for i in range(0, len(batch), 2)]

    def mini_loss(mini):
        if aggregation == "token_mean":
            return -sum(s.advantage * len(s.completion_ids) for s in mini) / sum(len(s.completion_ids) for s in mini)
        if aggregation == "seq_mean_token_mean":
            return -sum(s.advantage for s in mini) / len(mini)
        return -sum(s.advantage * len(s.completion_ids) for s in mini) / (len(mini) * SCALE_TOKENS)

    tokens = [sum(len(s.completion_ids) for s in mini) for mini in minis]
    return sum(mini_loss(m) * t for m, t in zip(minis, tokens)) / sum(tokens)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("ranks", [1, 2])
def test_learner_reports_the_closed_form_through_deepspeed(ray_session, tiny_model, ranks, aggregation):
    """Two mini-batches (an old-logprob pass) and a reference pass at learning rate 0, under every aggregation;
    then a one-sample batch, which leaves the second rank with no sample at all (it used to all-reduce other
    metric names)."""
    import ray

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", [
        f"learner.num_ranks={ranks}", "learner.mini_batch_size=2", "learner.micro_batch_size=1",
        "learner.learning_rate=0.0", "learner.kl_coef=0.1", "cluster.learner_threads=1",
        f"learner.loss_aggregation={aggregation}", f"learner.loss_scale_tokens={SCALE_TOKENS}"])
    group = start_learner_group(config, tiny_model, "")
    try:
        group.wait_ready(300)
        for batch in (samples(), samples()[:1]):
            local, plans = plan_batch(batch, ranks, 2, 1)
            reports = ray.get([rank.train_step.remote(part, plan) for rank, part, plan
                               in zip(group.ranks, local, plans)], timeout=300)
            for metrics in reports:
                assert metrics["loss"] == pytest.approx(closed_form_first_step(batch, aggregation), abs=1e-6)
                assert metrics["kl"] == pytest.approx(0.0, abs=1e-7) and metrics["clip_frac"] == 0.0
                assert metrics["train_tokens"] == sum(len(s.completion_ids) for s in batch)
    finally:
        group.shutdown()


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_learner_averages_episodes_by_their_length_through_deepspeed(ray_session, tiny_model, ranks):
    """episode_mean_token_mean (Delethink's normalisation) on real ranks: samples 0 and 1 are one episode,
    2 and 3 are one each; with mini-batches of 2 episodes the first holds episodes 0 and 1. At the first step
    each token's loss is -A of its sample, so a mini-batch's loss is the mean over its episodes of the
    token-weighted -A, and the reported loss the token-weighted mean of the mini-batches'."""
    import dataclasses

    import ray

    from cluster.workers import start_learner_group

    config = load_config("tests/configs/smoke.yaml", [
        f"learner.num_ranks={ranks}", "learner.mini_batch_size=2", "learner.micro_batch_size=1",
        "learner.learning_rate=0.0", "cluster.learner_threads=1", "learner.loss_aggregation=episode_mean_token_mean"])
    batch = [dataclasses.replace(s, episode=e) for s, e in zip(samples(), [0, 0, 1, 2])]
    first = ((-1.5 * 4 + 0.5 * 2) / 6 + -0.25) / 2  # episode 0: 4 + 2 tokens; episode 1: 3 tokens
    expected = (first * 9 + 1.25 * 1) / 10  # the second mini-batch: episode 2's one token, A = -1.25
    group = start_learner_group(config, tiny_model, "")
    try:
        group.wait_ready(300)
        assert group.whole_episodes  # an episode's rows reach one rank
        metrics = group.train_step(batch)
        assert metrics["loss"] == pytest.approx(expected, abs=1e-6)
    finally:
        group.shutdown()


def test_advantage_estimators_match_their_closed_forms():
    """Two groups of unequal size, one whose rewards are all equal."""
    from learner.advantages import ADVANTAGE_ESTIMATORS

    rewards, groups = [1.0, 0.0, 0.5, 2.0, 2.0], [0, 0, 0, 1, 1]
    mean = 0.5
    sd = math.sqrt(((1 - mean) ** 2 + (0 - mean) ** 2 + 0) / 2)
    expected = {
        "grpo": [0.5 / (sd + 1e-6), -0.5 / (sd + 1e-6), 0.0, 0.0, 0.0],
        "dr_grpo": [0.5, -0.5, 0.0, 0.0, 0.0],
        "rloo": [1 - 0.25, 0 - 0.75, 0.5 - 0.5, 0.0, 0.0],  # r - mean of the others
    }
    batch_mean = sum(rewards) / 5
    batch_sd = math.sqrt(sum((r - batch_mean) ** 2 for r in rewards) / 4)
    expected["reinforce_pp"] = [(r - batch_mean) / (batch_sd + 1e-6) for r in rewards]
    assert set(expected) <= set(ADVANTAGE_ESTIMATORS)
    for name, values in expected.items():
        assert ADVANTAGE_ESTIMATORS[name](rewards, groups).tolist() == pytest.approx(values, abs=1e-9), name
    assert ADVANTAGE_ESTIMATORS["rloo"]([3.0], [0]).tolist() == [0.0]  # a group of one has no baseline


def test_aggregations_match_their_closed_forms():
    from learner.objectives.aggregation import aggregate

    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # row 1 has 2 trained tokens (MASK)
    assert float(aggregate(per_token, MASK, "token_mean", SIZE)) == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)
    assert float(aggregate(per_token, MASK, "seq_mean_token_mean", SIZE)) == pytest.approx((2.0 + 4.5) / 2)
    assert float(aggregate(per_token, MASK, "seq_mean_token_sum_norm", SIZE, 10)) == pytest.approx(15 / (2 * 10))
    # By episode: both rows one episode of 5 trained tokens, then each its own (the sequence mean).
    one = torch.tensor([[5.0], [5.0]])
    assert float(aggregate(per_token, MASK, "episode_mean_token_mean", MiniBatchSize(5, 2, 1), episode_tokens=one)) \
        == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)
    own = torch.tensor([[3.0], [2.0]])
    assert float(aggregate(per_token, MASK, "episode_mean_token_mean", MiniBatchSize(5, 2, 2), episode_tokens=own)) \
        == pytest.approx((2.0 + 4.5) / 2)
    # A micro-batch's share: the rows of one micro-batch over the whole mini-batch's size.
    share = aggregate(per_token[:1], MASK[:1], "seq_mean_token_mean", SIZE) + \
        aggregate(per_token[1:], MASK[1:], "seq_mean_token_mean", SIZE)
    assert float(share) == pytest.approx((2.0 + 4.5) / 2)


def test_kl_estimators_match_their_closed_forms():
    from learner.objectives.kl import kl_estimate

    d = REF - LOGP
    assert torch.allclose(kl_estimate(LOGP, REF, "k1"), -d)
    assert torch.allclose(kl_estimate(LOGP, REF, "k2"), d * d / 2)
    assert torch.allclose(kl_estimate(LOGP, REF, "k3"), torch.exp(d) - d - 1)


def test_gspo_clips_whole_sequences_by_their_geometric_mean_ratio():
    from learner.objectives.gspo import gspo_loss

    logp = LOGP.clone().requires_grad_(True)
    loss, metrics = gspo_loss(logp, MASK, old_logprobs=OLD, advantages=ADV, size=SIZE, clip_low=0.2, clip_high=0.2)
    expected, clipped = 0.0, 0
    for b in range(2):
        n = int(MASK[b].sum())
        s = math.exp(sum(float(LOGP[b, t] - OLD[b, t]) for t in range(n)) / n)
        a = float(ADV[b, 0])
        bounded = min(max(s, 0.8), 1.2)
        expected += n * max(-a * s, -a * bounded)
        clipped += n * (-a * bounded > -a * s)
    assert float(loss.detach()) == pytest.approx(expected / 5, abs=1e-6)
    assert float(metrics["clip_frac"]) == clipped
    loss.backward()
    assert torch.all(logp.grad[MASK == 0] == 0)


def test_cispo_keeps_a_gradient_on_clipped_tokens():
    from learner.objectives.cispo import cispo_loss

    logp = LOGP.clone().requires_grad_(True)
    loss, metrics = cispo_loss(logp, MASK, old_logprobs=OLD, advantages=ADV, size=SIZE, clip_low=0.2, clip_high=0.2)
    expected, clipped = 0.0, 0
    for b in range(2):
        for t in range(3):
            if MASK[b, t]:
                r = math.exp(float(LOGP[b, t] - OLD[b, t]))
                w = min(max(r, 0.8), 1.2)
                expected += -w * float(ADV[b, 0]) * float(LOGP[b, t])
                clipped += w != r
    assert float(loss.detach()) == pytest.approx(expected / 5, abs=1e-6)
    assert float(metrics["clip_frac"]) == clipped == 2
    loss.backward()
    # The gradient of each trained token is -w * A / tokens, clipped tokens included (PPO's clip zeroes those).
    grad = logp.grad
    for b in range(2):
        for t in range(3):
            if MASK[b, t]:
                r = math.exp(float(LOGP[b, t] - OLD[b, t]))
                assert float(grad[b, t]) == pytest.approx(-min(max(r, 0.8), 1.2) * float(ADV[b, 0]) / 5, abs=1e-6)



# The policy losses: what `motif train` trains with advantages (dpo, which also trains under it, reads pairs).
POLICY_LOSSES = sorted(name for name, objective in OBJECTIVES.items()
                       if "train" in objective.commands and "advantages" in objective.needs(LearnerConfig()))


@pytest.mark.parametrize("name", POLICY_LOSSES)
def test_truncated_is_against_the_learners_own_logprobs_is_the_on_policy_loss(name):
    """Behaviour = the learner's old logprobs: every weight is exp(0) = 1, so the loss and its gradient are
    exactly those without truncated importance sampling (for the clipped loss, the closed form)."""
    objective = OBJECTIVES[name]
    options = objective.options(LearnerConfig(kl_coef=0.1))
    runs = []
    for extra in ({}, {"behaviour_logprobs": OLD.clone(), "tis_cap": 2.0}):
        logp = LOGP.clone().requires_grad_(True)
        loss, metrics = objective.loss(logp, MASK, old_logprobs=OLD, advantages=ADV, ref_logprobs=REF, size=SIZE,
                                       **{**options, **extra})
        loss.backward()
        runs.append((loss.detach(), logp.grad, metrics))
    (plain, plain_grad, _), (weighted, weighted_grad, metrics) = runs
    assert torch.equal(weighted, plain) and torch.equal(weighted_grad, plain_grad)
    assert float(metrics["tis_capped_frac"]) == 0
    if name in ("clipped", "ppo_clip"):
        assert float(weighted) == pytest.approx(closed_form_clipped(0.2, 0.1, 5)[0], abs=1e-6)


def weighed_clipped_by_hand(weights: list[list[float]]) -> float:
    """The clipped surrogate (clip 0.2) with each token weighed by `weights`, plus k3 KL at 0.1, token sum."""
    expected = 0.0
    for b in range(2):
        a = float(ADV[b, 0])
        for t in range(3):
            if MASK[b, t]:
                ratio = math.exp(float(LOGP[b, t]) - float(OLD[b, t]))
                surrogate = max(-a * ratio, -a * min(max(ratio, 0.8), 1.2))
                d = float(REF[b, t]) - float(LOGP[b, t])
                expected += weights[b][t] * surrogate + 0.1 * (math.exp(d) - d - 1)
    return expected


def test_truncated_is_caps_the_weight_and_leaves_kl_unweighed():
    """By hand: the weights exp(old - behaviour) are e (capped at 2), 1, e^0.5 and 1, e^-0.2; the surrogate is
    weighed, the KL term is not, and the weight carries no gradient (cispo's gradient is -w_tis * w_clip * A)."""
    from learner.objectives.cispo import cispo_loss

    cap = 2.0
    weights = [[cap, 1.0, math.exp(0.5)], [1.0, math.exp(-0.2), 0.0]]
    expected = weighed_clipped_by_hand(weights)
    loss, metrics = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, ref_logprobs=REF, kl_coef=0.1,
                                 behaviour_logprobs=BEHAVIOUR, tis_cap=cap, size=SIZE)
    assert float(loss) == pytest.approx(expected / 5, abs=1e-6)
    assert float(metrics["tis_capped_frac"]) == 1  # e > 2; the masked token's e^3 is not counted

    logp = LOGP.clone().requires_grad_(True)
    loss, _ = cispo_loss(logp, MASK, old_logprobs=OLD, advantages=ADV, behaviour_logprobs=BEHAVIOUR, tis_cap=cap,
                         size=SIZE)
    loss.backward()
    for b in range(2):
        for t in range(3):
            r = math.exp(float(LOGP[b, t] - OLD[b, t]))
            clip = min(max(r, 0.8), 1.2)
            assert float(logp.grad[b, t]) == pytest.approx(-weights[b][t] * clip * float(ADV[b, 0]) / 5, abs=1e-6)


def test_decoupled_weighs_by_the_ratio_and_leaves_out_tokens_above_the_cap():
    """AReaL's decoupled objective (learner.correction=decoupled), by hand: the weights exp(old - behaviour) are
    e (above the cap 2: left out, weight 0), 1, e^0.5 and 1, e^-0.2; the surrogate is clipped around the
    proximal policy (old) and weighed, the KL term is not. With behaviour = old it is the on-policy loss."""
    cap = 2.0
    weights = [[0.0, 1.0, math.exp(0.5)], [1.0, math.exp(-0.2), 0.0]]
    expected = weighed_clipped_by_hand(weights)
    options = OBJECTIVES["clipped"].options(LearnerConfig(kl_coef=0.1, correction="decoupled", tis_cap=cap))
    assert options["tis_mode"] == "decoupled" and options["tis_cap"] == cap
    loss, metrics = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, ref_logprobs=REF,
                                 behaviour_logprobs=BEHAVIOUR, size=SIZE, **options)
    assert float(loss) == pytest.approx(expected / 5, abs=1e-6)
    assert float(metrics["tis_capped_frac"]) == 1
    on_policy, _ = clipped_loss(LOGP, MASK, old_logprobs=OLD, advantages=ADV, ref_logprobs=REF,
                                behaviour_logprobs=OLD.clone(), size=SIZE, **options)
    assert float(on_policy) == pytest.approx(closed_form_clipped(0.2, 0.1, 5)[0], abs=1e-6)


def test_a_correction_is_on_by_default_when_rollouts_may_be_stale():
    """learner.correction=auto: none at rollout.max_staleness=0 (unless tis_cap is set), tis at S >= 1 with the
    cap 2 where tis_cap is unset; an explicit none stays none; dpo reads no vLLM logprobs and gets none."""
    from learner.objectives.tis import correction, correction_cap, for_staleness

    cases = [(LearnerConfig(), 0, "none", None), (LearnerConfig(tis_cap=3.0), 0, "tis", 3.0),
             (LearnerConfig(), 1, "tis", 2.0), (LearnerConfig(tis_cap=5.0), 2, "tis", 5.0),
             (LearnerConfig(correction="none"), 2, "none", None),
             (LearnerConfig(correction="decoupled"), 1, "decoupled", 2.0),
             (LearnerConfig(policy_loss="dpo", credit="best_worst"), 2, "none", None)]
    for config, staleness, mode, cap in cases:
        resolved = for_staleness(config, staleness)
        assert (correction(resolved), correction_cap(resolved)) == (mode, cap), (config, staleness)
        assert ("behaviour_logprobs" in OBJECTIVES[resolved.policy_loss].needs(resolved)) == (cap is not None)
