"""Overlong filtering (learner.mask_truncated): every trained turn that hit rollout.max_tokens leaves the loss, while
its episode still counts in its group's advantages; off, a step trains what it did. Driven through run_step on a
scripted pool (which completions are truncated is chosen) and a learner stand-in that records what it is given
(tests/test_kl_in_reward.py drives the same step with KL in the reward)."""

from __future__ import annotations

import statistics

import pytest

from cluster.config import ConfigError, load_config
from cluster.loop.step import StepParts, run_step
from cluster.spec import rollout_spec
from cluster.tasks.data import Problem
from learner.advantages import ADVANTAGE_ESTIMATORS
from learner.credit import CREDIT, SCORES_ANSWERS
from rewards import RewardTerm, build_rewards
from rollout.protocols import PROTOCOLS, protocol_name
from rollout.records import Completion
from tests.test_dynamic_sampling import Learner

GOOD_ANSWER = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>"
GOOD_PROGRESS = "<reasoning>r</reasoning><progress>p</progress>"
BAD = "no tags"
M, K = 4, 2  # samples per prompt, continuations


class ScriptedPool:
    """Sample j of each request: well formed when j is odd, truncated when `truncated(round, j)`; round 1 is the
    request for M samples. Completion ids say where a sample came from: (round, request, j)."""

    digest = ""

    def __init__(self, truncated, rounds: int):
        self.truncated, self.rounds, self.requests = truncated, rounds, 0

    def begin(self, *key):
        pass

    def generate(self, conversations, sampling, use_adapter=True):
        first = sampling.n == M
        good = (GOOD_PROGRESS if self.rounds > 1 else GOOD_ANSWER) if first else GOOD_ANSWER
        out = []
        for _ in conversations:
            self.requests += 1
            out.append([Completion([1], [2 if first else 3, self.requests, j], good if j % 2 else BAD, [0.0] * 3,
                                   "length" if self.truncated(1 if first else 2, j) else "stop", 0)
                        for j in range(sampling.n)])
        return out

    def take_counters(self):
        return {}

    def push(self, payload, digest, version):
        pass


def step(tmp_path, truncated, *overrides, rounds=1, credit="first_round", learner=None):
    config = load_config("tests/configs/smoke.yaml", [f"rollout.rounds={rounds}", f"learner.credit={credit}",
                                                      f"rollout.samples_per_prompt={M}", f"rollout.continuations={K}",
                                                      *overrides])
    rewards = build_rewards([RewardTerm("format")], "reasoning_answer" if rounds == 1 else "reasoning_progress")
    pool, learner = ScriptedPool(truncated, rounds), learner or Learner()
    protocol = PROTOCOLS[protocol_name(None, rounds)]
    parts = StepParts(config, pool, learner, protocol, rollout_spec(config, rewards), rewards,
                      ADVANTAGE_ESTIMATORS["grpo"], CREDIT[credit], credit in SCORES_ANSWERS, tmp_path, False)
    result = run_step(parts, [Problem("q0", "4", 0), Problem("q1", "4", 1)], step=1)
    return result, learner.trained[0] if learner.trained else []


def grpo(rewards):
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + 1e-6) for r in rewards]


def test_truncated_roots_leave_the_loss_but_count_in_their_group(tmp_path):
    def truncated(round_index, j):  # a bad sample and a good one of every group
        return j in (0, 3)

    off, trained_off = step(tmp_path / "off", truncated)
    on, trained_on = step(tmp_path / "on", truncated, "learner.mask_truncated=true")
    assert "rollout/masked_truncated" not in off.metrics and len(trained_off) == 2 * M
    assert [s.truncated for s in trained_off] == [j in (0, 3) for _ in range(2) for j in range(M)]
    # The advantages of the kept samples are the group's of all four (rewards 0, 1, 0, 1), not of the two left.
    assert on.metrics["rollout/masked_truncated"] == 4 and on.trained
    assert [s.completion_ids[2] for s in trained_on] == [1, 2, 1, 2]
    assert [s.advantage for s in trained_on] == pytest.approx([grpo([0, 1, 0, 1])[j] for j in (1, 2)] * 2)
    assert trained_on == [s for s in trained_off if not s.truncated]


def test_a_step_whose_every_trained_turn_was_truncated_is_skipped_and_says_why(tmp_path):
    result, trained = step(tmp_path, lambda round_index, j: True, "learner.mask_truncated=true")
    assert not result.trained and not trained and result.metrics["rollout/masked_truncated"] == 2 * M
    assert result.skipped_because == "every trained turn hit rollout.max_tokens (learner.mask_truncated)"


def test_motif_every_round_masks_each_truncated_round_and_keeps_the_chains_below_it(tmp_path):
    """Round 1 that hit the limit leaves the loss; its continuations, sampled from the policy, are trained by
    their own chains' answers, and a continuation that hit the limit leaves it too, its chain still ranked."""
    def truncated(round_index, j):
        return (round_index, j) in ((1, 1), (2, 0))  # a good root; the first continuation of every root

    off, trained_off = step(tmp_path / "off", truncated, rounds=2, credit="every_round")
    on, trained_on = step(tmp_path / "on", truncated, "learner.mask_truncated=true", rounds=2, credit="every_round")
    roots, chains = 2 * M, 2 * M * K
    assert len(trained_off) == roots + chains
    assert on.metrics["rollout/masked_truncated"] == 2 + roots  # one root a group, one continuation a root
    assert trained_on == [s for s in trained_off if not s.truncated]
    kept_roots = [s for s in trained_on if s.completion_ids[0] == 2]
    assert [s.completion_ids[2] for s in kept_roots] == [0, 2, 3] * 2
    assert [s.advantage for s in kept_roots] == pytest.approx([a for j, a in enumerate(grpo([0, 1, 0, 1])) if j != 1] * 2)
    # Every root's surviving continuation is the good one (j = 1): ranked against its truncated bad sibling.
    kept_chains = [s for s in trained_on if s.completion_ids[0] == 3]
    assert len(kept_chains) == roots and all(s.completion_ids[2] == 1 for s in kept_chains)
    assert [s.advantage for s in kept_chains] == pytest.approx([grpo([0, 1])[1]] * roots)


def test_mask_truncated_refuses_rounds_that_carry_tokens_over_at_the_limit():
    with pytest.raises(ConfigError, match="learner.mask_truncated would leave out the rounds that rollout.carry=tokens"):
        load_config("demo", ["learner.mask_truncated=true", "rollout.protocol=markovian", "rollout.carry=tokens"])
    assert load_config("demo", ["learner.mask_truncated=true", "rollout.protocol=markovian"]).learner.mask_truncated
