"""DAPO's dynamic sampling (rollout.dynamic_sampling): a group whose episodes all scored alike is dropped and fresh
prompts are sampled until B groups that differ are kept, at most rollout.dynamic_sampling_max_refills batches
more; off, a step is what it was. Driven through run_step on stand-ins for the pool and the learner: a scripted
pool answers a "mixed" question half well formed and half not (its rewards differ) and an "alike" one always
well formed (its group scores alike), so which groups carry a signal is known without a model."""

from __future__ import annotations

import json

import pytest

from cluster.config import ConfigError, load_config
from cluster.loop.step import StepParts, refill_batch, run_step, with_signal
from cluster.spec import rollout_spec
from cluster.tasks.data import Problem
from learner.advantages import ADVANTAGE_ESTIMATORS
from learner.credit import CREDIT
from rewards import RewardTerm, Scored, build_rewards
from rollout.protocols import PROTOCOLS
from rollout.records import Completion, Episode

GOOD, BAD = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>", "no tags"
M = 4  # samples per prompt


class ScriptedPool:
    digest = ""

    def __init__(self):
        self.keys, self.questions = [], []

    def begin(self, *key):
        self.keys.append(key)

    def generate(self, conversations, sampling, use_adapter=True):
        texts = [c[-1]["content"] for c in conversations]
        self.questions.append([next(w for w in t.split() if w.startswith(("mixed", "alike"))) for t in texts])
        return [[Completion([1], [2, 3], BAD if "mixed" in t and j % 2 else GOOD, [0.0, 0.0], "stop", 0)
                 for j in range(sampling.n)] for t in texts]

    def take_counters(self):
        return {"rollout/worker_restarts": 0.0, "rollout/retried_requests": 1.0, "rollout/failed_requests": 0.0}

    def push(self, payload, digest, version):
        pass


class Learner:
    def __init__(self):
        self.trained = []

    def train_step(self, samples, seed):
        self.trained.append(samples)
        return {"loss": 0.0}

    def adapter_payload(self, version):
        return "digest", b""


def problems(*names):
    return [Problem(f"{name} question", "4", row) for row, name in enumerate(names)]


def step(tmp_path, pool_problems, *overrides, batch_size=2):
    config = load_config("tests/configs/smoke.yaml", ["rollout.rounds=1", "learner.credit=first_round",
                                                      f"rollout.samples_per_prompt={M}",
                                                      f"rollout.prompts_per_step={batch_size}", *overrides])
    rewards = build_rewards([RewardTerm("format")], "reasoning_answer")
    pool, learner = ScriptedPool(), Learner()
    parts = StepParts(config, pool, learner, PROTOCOLS["single"], rollout_spec(config, rewards), rewards,
                      ADVANTAGE_ESTIMATORS["grpo"], CREDIT["first_round"], False, tmp_path, False, pool_problems)
    result = run_step(parts, pool_problems[:batch_size], step=1)
    records = [json.loads(line) for line in (tmp_path / "step-1.jsonl").read_text().splitlines()]
    return result, pool, learner, records


def test_dynamic_sampling_refills_and_stops_at_its_bound(tmp_path):
    # The step's batch holds one degenerate group; the first refill brings two groups that differ, one too many.
    result, pool, learner, records = step(tmp_path / "refill", problems("alike0", "mixed0", *[f"mixed{k}" for k in
                                                                                              range(1, 5)]),
                                          "rollout.dynamic_sampling=true")
    assert pool.keys == [("train", 1), ("train", 1, "refill", 1)]
    refill = pool.questions[1]
    assert pool.questions[0] == ["alike0", "mixed0"] and len(set(refill)) == 2 and not {"alike0", "mixed0"} & set(refill)
    m = result.metrics
    assert result.trained and (m["rollout/degenerate_groups"], m["rollout/refill_batches"], m["rollout/kept_groups"],
                               m["rollout/refill_exhausted"]) == (1, 1, 2, 0)
    assert m["rollout/retried_requests"] == 2  # the pool's counts cover every batch sampled
    assert m["reward/format"] == 0.75  # the figures are the step's own batch's: 4 + 2 of 8 well formed
    # B groups trained, the estimator seeing them alone (two good and two bad samples in each).
    (samples,) = learner.trained
    assert len(samples) == 2 * M and all(abs(s.advantage) > 0.8 for s in samples)
    assert sorted({s.episode for s in samples}) == list(range(2 * M))
    # samples.jsonl holds what was sampled, each batch numbered as it was, the dropped groups with no advantage.
    assert [(r["batch"], r["prompt"], r["dropped"]) for r in records] == (
        [(0, 0, "degenerate")] * M + [(0, 1, None)] * M + [(1, 0, None)] * M + [(1, 1, "surplus")] * M)
    assert all((r["advantage"] is None) == (r["dropped"] is not None) for r in records)

    # Every fresh batch degenerate: the bound stops the refills, and the step trains the one group it has.
    result, pool, learner, records = step(tmp_path / "bound", problems("alike0", "mixed0", *[f"alike{k}" for k in
                                                                                             range(1, 9)]),
                                          "rollout.dynamic_sampling=true", "rollout.dynamic_sampling_max_refills=2")
    assert pool.keys == [("train", 1), ("train", 1, "refill", 1), ("train", 1, "refill", 2)]
    m = result.metrics
    assert result.trained and (m["rollout/degenerate_groups"], m["rollout/refill_batches"], m["rollout/kept_groups"],
                               m["rollout/refill_exhausted"]) == (5, 2, 1, 1)
    assert len(learner.trained[0]) == M and len(records) == 6 * M

    # Nothing that differs anywhere: the step is skipped, as one with nothing to learn from.
    result, pool, learner, _ = step(tmp_path / "none", problems(*[f"alike{k}" for k in range(10)]),
                                    "rollout.dynamic_sampling=true", "rollout.dynamic_sampling_max_refills=2")
    assert not result.trained and not learner.trained and result.metrics["skipped_step"] == 1
    assert result.skipped_because.startswith("no group's rewards differed in 3 batches")

    # A bound of 0 drops the degenerate groups and samples nothing more.
    result, pool, learner, _ = step(tmp_path / "zero", problems("alike0", "mixed0", "mixed1", "mixed2"),
                                    "rollout.dynamic_sampling=true", "rollout.dynamic_sampling_max_refills=0")
    assert pool.keys == [("train", 1)] and len(learner.trained[0]) == M
    assert result.metrics["rollout/refill_exhausted"] == 1


def test_off_a_step_trains_every_group_and_on_without_degenerate_groups_trains_the_same(tmp_path):
    pool_problems = problems("alike0", "mixed0", "mixed1", "mixed2")
    result, pool, learner, records = step(tmp_path / "off", pool_problems)
    assert pool.keys == [("train", 1)] and len(learner.trained[0]) == 2 * M
    assert not any(k.startswith(("rollout/degenerate", "rollout/refill", "rollout/kept", "time_refill"))
                   for k in result.metrics)
    assert [r["advantage"] for r in records[:M]] == [0.0] * M and "batch" not in records[0]

    mixed = problems("mixed0", "mixed1", "mixed2")
    off, _, off_learner, _ = step(tmp_path / "mixed-off", mixed)
    on, pool, on_learner, _ = step(tmp_path / "mixed-on", mixed, "rollout.dynamic_sampling=true")
    assert pool.keys == [("train", 1)] and on_learner.trained == off_learner.trained
    timing = ("time_",)
    added = {"rollout/degenerate_groups", "rollout/refill_batches", "rollout/kept_groups", "rollout/refill_exhausted"}
    assert ({k: v for k, v in on.metrics.items() if not k.startswith(timing) and k not in added}
            == {k: v for k, v in off.metrics.items() if not k.startswith(timing)})


def test_refills_are_a_function_of_the_seed_the_step_and_the_refill():
    pool_problems = problems(*[f"alike{k}" for k in range(20)])
    taken = set(pool_problems[:2])
    first = refill_batch(pool_problems, taken, 2, 0, 5, 1)
    assert first == refill_batch(pool_problems, taken, 2, 0, 5, 1) and not taken & set(first)
    assert len({tuple(refill_batch(pool_problems, taken, 2, seed, step, i)) for seed, step, i in
                [(0, 5, 1), (1, 5, 1), (0, 6, 1), (0, 5, 2)]}) == 4
    assert refill_batch(pool_problems, set(pool_problems[:19]), 2, 0, 5, 1) == pool_problems[19:]


def test_a_group_alike_in_reward_carries_a_signal_when_its_answers_are_trained_and_differ():
    episodes = [Episode(0, []), Episode(0, []), Episode(1, []), Episode(1, [])]
    assert with_signal(episodes, Scored([0.5, 0.5, 0.0, 1.0], {})) == [1]
    # every_round: the same future accuracy from different answers trains the continuation rounds.
    assert with_signal(episodes, Scored([0.5, 0.5, 1.0, 1.0], {}, [[1.0, 0.0], [0.5, 0.5], [1.0], [1.0]])) == [0]
    assert with_signal(episodes, Scored([0.5, 0.5, 1.0, 1.0], {}, [[0.5, None], [0.5, 0.5], [], [1.0]])) == []


def test_a_negative_bound_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="rollout.dynamic_sampling_max_refills must be >= 0, got -1"):
        load_config("tests/configs/smoke.yaml", ["rollout.dynamic_sampling_max_refills=-1"])


def test_a_checkpoint_written_before_dynamic_sampling_resumes_only_without_it():
    from cluster.checkpoint import resume_fields, resume_mismatches
    from cluster.config import to_dict

    def fields(*overrides):
        return resume_fields(to_dict(load_config("tests/configs/smoke.yaml", list(overrides))))

    old = {k: v for k, v in fields().items() if not k.startswith("rollout.dynamic_sampling")}
    assert resume_mismatches(old, fields()) == []
    assert [m.split(":")[0] for m in resume_mismatches(old, fields("rollout.dynamic_sampling=true"))] == [
        "rollout.dynamic_sampling"]
