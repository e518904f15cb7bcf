"""GRPO advantages and loss against a plain float64 reference written out here."""

from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import grpo_advantages
from learner.objectives.clipped import clipped_surrogate
from learner.objectives.kl import kl_estimate


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def reference_advantages(rewards, groups, eps=1e-6):
    out = [0.0] * len(rewards)
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        vals = [rewards[i] for i in idx]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        for i in idx:
            out[i] = (rewards[i] - mean) / (std + eps) if len(vals) > 1 else rewards[i] - mean
    return out


def reference_loss(logp, old, ref, adv, mask, clip, kl_coef):
    total, count = 0.0, 0
    for b in range(len(logp)):
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logp[b][t] - old[b][t])
            surrogate = max(-adv[b] * ratio, -adv[b] * min(max(ratio, 1 - clip), 1 + clip))
            d = ref[b][t] - logp[b][t]
            total += surrogate + kl_coef * (math.exp(d) - d - 1)
            count += 1
    return total / count


def test_advantages_match_reference_including_flat_group():
    rewards = [1.0, 0.0, 0.5, 0.25, 0.7, 0.7, 0.7, 0.7, 2.0, -1.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    got = grpo_advantages(rewards, groups)
    want = reference_advantages(rewards, groups)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    flat = got[4:8]
    assert torch.all(flat == 0) and not torch.isnan(got).any()
    # within each group the advantages sum to zero
    for g in (0, 1, 2):
        assert abs(float(got[[i for i, x in enumerate(groups) if x == g]].sum())) < 1e-9


def test_advantages_without_std_normalisation_are_centred_rewards():
    got = grpo_advantages([3.0, 1.0, 2.0], [0, 0, 0], norm_by_std=False)
    assert got.tolist() == pytest.approx([1.0, -1.0, 0.0])


def test_clipped_loss_and_kl_match_float64_reference():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3
    old = logp + (torch.rand(3, 5, generator=gen, dtype=torch.float64) - 0.5) * 0.8  # ratios well past the clip
    ref = logp + (torch.rand(3, 5, generator=gen, dtype=torch.float64) - 0.5) * 0.4
    adv = torch.tensor([1.5, -0.7, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    per_token, clipped = clipped_surrogate(logp, old, adv[:, None], clip_low=0.2, clip_high=0.2)
    loss = masked_mean(per_token + 0.1 * kl_estimate(logp, ref, "k3"), mask)
    want = reference_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.1)
    assert float(loss) == pytest.approx(want, rel=1e-12)
    assert clipped.sum() > 0, "inputs were built so that clipping is active on some tokens"
    # zero-advantage sample contributes zero policy loss
    assert torch.all(per_token[2] == 0)


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    assert torch.all(kl_estimate(lp, lp, "k3") == 0)
    assert torch.all(kl_estimate(lp, lp + 0.3, "k3") > 0)


def test_every_round_credit_trains_each_chain_by_its_own_answer():
    """`first_round` trains round 1 only; `every_round` adds each continuation round, its advantage the score of
    the chain's final answer (from the reward stage) normalised among the sample's k chains, at the continuation
    temperature; chains that all agree have advantage 0 and are trained as a root with advantage 0 is (defect 3:
    they used to be dropped while such roots were kept); a chain whose answer could not be scored is left out."""
    from learner.credit import CREDIT
    from rollout.records import Completion, Episode, Turn

    def turn(prompt: int, text: str, index: int, parent: int | None) -> Turn:
        return Turn(Completion([prompt], [prompt + 1], text, [0.0], "stop", 1), "m", index, parent,
                    1.0 if parent is None else 0.8)

    def episode(index: int, root: int, chains: list[tuple[int, str]]) -> Episode:
        e = Episode(index, [turn(root, "r1", 1, None)])
        for prompt, final in chains:
            e.add(turn(prompt + 10, final, 3, e.add(turn(prompt, "r2", 2, 0))))
        return e

    right, wrong = "<answer>\\boxed{4}</answer>", "<answer>\\boxed{5}</answer>"
    split = episode(0, 10, [(20, right), (40, wrong)])
    agreed = episode(1, 60, [(70, right), (90, right)])
    trajectories, advantages = [split, agreed], [0.25, -0.25]
    assert [[t.completion.prompt_ids for t in chain] for chain in split.chains()] == [[[20], [30]], [[40], [50]]]
    options = dict(final_scores=[[1.0, 0.0], [1.0, 1.0]], estimator=grpo_advantages, norm_by_std=True)

    first = CREDIT["first_round"](trajectories, advantages, **options)
    assert [(s.prompt_ids, s.advantage, s.temperature) for s in first] == [([10], 0.25, None), ([60], -0.25, None)]
    every = CREDIT["every_round"](trajectories, advantages, **options)
    assert every[:2] == first
    half = 0.5 / (math.sqrt(0.5) + 1e-6)  # rewards (1, 0): centred by 0.5, divided by their sample std
    assert [(s.prompt_ids, round(s.advantage, 6), s.temperature) for s in every[2:]] == [
        ([20], round(half, 6), 0.8), ([30], round(half, 6), 0.8), ([40], round(-half, 6), 0.8), ([50], round(-half, 6), 0.8),
        ([70], 0.0, 0.8), ([80], 0.0, 0.8), ([90], 0.0, 0.8), ([100], 0.0, 0.8)]
    unscored = CREDIT["every_round"](trajectories, advantages, **{**options, "final_scores": [[1.0, None], [1.0, 1.0]]})
    # The unscored chain is left out; the scored one, alone in its group, has advantage 0.
    assert [(s.prompt_ids, s.advantage) for s in unscored[2:]] == [([20], 0.0), ([30], 0.0), ([70], 0.0), ([80], 0.0),
                                                                  ([90], 0.0), ([100], 0.0)]
    # A turn with advantage 0 is trained under both entries alike, root or chain; every trained turn names its
    # episode.
    for name in ("first_round", "every_round"):
        trained = CREDIT[name](trajectories, [0.0, -0.25], **options)
        assert [(s.prompt_ids, s.advantage) for s in trained[:2]] == [([10], 0.0), ([60], -0.25)]
        assert all(s.episode == (0 if s.prompt_ids[0] < 60 else 1) for s in trained)
