"""The self_correct protocol on a scripted model (no model needed): how its episodes are built and when they
stop, what each credit trains and with which advantage, what the rewards see, and its figures against a hand
computation."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster.config import load_config
from cluster.evaluation import mean_outcomes, outcome_summary
from cluster.tasks.data import Problem
from learner.credit import CREDIT
from rollout.protocols import PROTOCOLS
from rollout.protocols.self_correct import (CORRECT_INSTRUCTION, VERIFY_INSTRUCTION, SelfCorrectSpec, outcomes,
                                            parse_verdict)
from rollout.records import RESPONSE, VERDICT, Completion
from tests.test_self_correct_run import assert_accounted

PROTOCOL = PROTOCOLS["self_correct"]
RIGHT, WRONG_ANSWER = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>", "<reasoning>r</reasoning><answer>\\boxed{5}</answer>"


def scripted(scripts: list[list[str]]):
    """A model whose sample s of every question answers with scripts[s] in turn order (attempt, verdict,
    attempt, ...); records every conversation it was sent. Token ids encode (sample, turn) for the checks."""
    sent = []

    def generate(conversations, sampling, use_adapter):
        sent.extend(conversations)
        out = []
        for conversation in conversations:
            if len(conversation) == 2:  # the first attempt: one completion per sample
                out.append([_completion(s, 0, scripts[s][0]) for s in range(sampling.n)])
            else:
                # The sample is read back from the first attempt's text in the conversation.
                turn = (len(conversation) - 2) // 2
                s = next(i for i, script in enumerate(scripts) if script[0] == conversation[2]["content"])
                out.append([_completion(s, turn, scripts[s][turn])])
        return out

    return generate, sent


def _completion(sample: int, turn: int, text: str) -> Completion:
    return Completion([1], [100 * sample + turn], text, [0.0], "stop", 0)


SCRIPTS = [
    [RIGHT + " a", "[VERIFY] correct"],  # right, judged correct: stops after one attempt
    [WRONG_ANSWER + " b", "it is [VERIFY] wrong", RIGHT + " b2", "[VERIFY] correct"],  # wrong -> right
    [RIGHT + " c", "[VERIFY] wrong", WRONG_ANSWER + " c2", "[VERIFY] wrong"],  # right -> wrong, out of attempts
    [WRONG_ANSWER + " d", "no verdict"],  # neither form: the episode ends there
]


def rollout(max_attempts: int = 2):
    generate, sent = scripted(SCRIPTS)
    spec = SelfCorrectSpec(samples_per_prompt=len(SCRIPTS), max_attempts=max_attempts)
    return PROTOCOL.rollout(generate, ["2+2?"], spec), sent


def test_episodes_follow_the_verdicts_and_stop_at_the_first_correct_or_the_last_attempt():
    episodes, sent = rollout()
    assert [len(e.turns) for e in episodes] == [2, 4, 4, 2]
    e = episodes[1]
    assert [t.kind for t in e.turns] == [RESPONSE, VERDICT, RESPONSE, VERDICT]
    assert [t.index for t in e.turns] == [1, 1, 2, 2] and [t.parent for t in e.turns] == [None, 0, 1, 2]
    assert [t.message for t in e.turns[1:]] == [VERIFY_INSTRUCTION, CORRECT_INSTRUCTION, VERIFY_INSTRUCTION]
    assert episodes[3].stats == {"unparsed_verdicts": 1}
    assert sum(e.stats["unparsed_verdicts"] for e in episodes) == 1
    # The correction was asked for with the whole conversation so far: attempt, instruction, verdict.
    correction = next(c for c in sent if c[-1]["content"] == CORRECT_INSTRUCTION)
    assert [m["role"] for m in correction] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert correction[2]["content"] == SCRIPTS[1][0] and correction[4]["content"] == SCRIPTS[1][1]


def test_one_attempt_is_judged_and_never_corrected():
    episodes, _ = rollout(max_attempts=1)
    assert [len(e.turns) for e in episodes] == [2, 2, 2, 2]


def test_verdicts_are_read_in_their_fixed_form_only():
    assert parse_verdict("so [VERIFY] correct") == "correct"
    assert parse_verdict("[VERIFY] correct, no: [VERIFY] wrong") == "wrong"
    assert parse_verdict("correct") is None and parse_verdict("[VERIFY] maybe") is None


def test_every_turn_trains_the_model_turns_with_the_episode_advantage_and_final_turn_the_last_attempt():
    episodes, _ = rollout()
    advantages = [0.5, 1.5, -1.0, -1.0]
    every = CREDIT["every_turn"](episodes, advantages)
    # Model turns only (the instructions are prompt), each with its episode's advantage.
    assert [(s.completion_ids, s.advantage, s.episode) for s in every] == [
        ([0], 0.5, 0), ([1], 0.5, 0),
        ([100], 1.5, 1), ([101], 1.5, 1), ([102], 1.5, 1), ([103], 1.5, 1),
        ([200], -1.0, 2), ([201], -1.0, 2), ([202], -1.0, 2), ([203], -1.0, 2),
        ([300], -1.0, 3), ([301], -1.0, 3)]
    final = CREDIT["final_turn"](episodes, advantages)
    assert [(s.completion_ids, s.advantage) for s in final] == [([0], 0.5), ([102], 1.5), ([202], -1.0), ([300], -1.0)]


def test_the_rewards_see_the_final_attempt_alone(tmp_path):
    from cluster.loop.step import StepParts, score_and_credit
    from learner.advantages import ADVANTAGE_ESTIMATORS
    from rewards import RewardTerm, build_rewards

    config = load_config("tests/configs/smoke.yaml", ["rollout.protocol=self_correct", "learner.credit=every_turn",
                                                      "rollout.samples_per_prompt=4"])
    episodes, _ = rollout()
    rewards = build_rewards([RewardTerm("accuracy")], "reasoning_answer")
    parts = StepParts(config, None, None, PROTOCOL, SelfCorrectSpec(samples_per_prompt=4), rewards,
                      ADVANTAGE_ESTIMATORS["dr_grpo"], CREDIT["every_turn"], False, tmp_path, False)
    samples, metrics = score_and_credit(parts, [Problem("2+2?", "4", 0)], episodes, step=1)
    # Final answers: right, right (corrected), wrong (changed), wrong: accuracy 0.5, advantages +-0.5.
    assert metrics["reward/accuracy"] == 0.5
    assert [s.advantage for s in samples if s.completion_ids[0] % 100 == 0] == [0.5, 0.5, -0.5, -0.5]
    assert metrics["self_correct/turn1_accuracy"] == 0.5 and metrics["self_correct/final_accuracy"] == 0.5
    assert metrics["self_correct/delta_incorrect_to_correct"] == 0.25
    assert metrics["self_correct/delta_correct_to_incorrect"] == 0.25
    assert metrics["rollout/unparsed_verdicts"] == 1


def test_the_figures_equal_a_hand_computation():
    episodes, _ = rollout()
    # Graded attempts (turn index -> right?): as scripted.
    grades = [{0: True}, {0: False, 2: True}, {0: True, 2: False}, {0: False}]
    figures = [outcomes(e, g) for e, g in zip(episodes, grades)]
    assert figures[0] == {"turn1_accuracy": 1.0, "final_accuracy": 1.0, "delta_incorrect_to_correct": 0.0,
                          "delta_correct_to_incorrect": 0.0, "attempts": 1.0, "verdict_accuracy_on_correct": 1.0,
                          "verdict_accuracy_on_wrong": None}
    assert figures[1]["delta_incorrect_to_correct"] == 1.0 and figures[1]["attempts"] == 2.0
    assert figures[1]["verdict_accuracy_on_correct"] == 1.0 and figures[1]["verdict_accuracy_on_wrong"] == 1.0
    # Right, then judged wrong (a wrong verdict), changed to wrong and judged wrong (a right verdict).
    assert figures[2]["delta_correct_to_incorrect"] == 1.0
    assert figures[2]["verdict_accuracy_on_correct"] == 0.0 and figures[2]["verdict_accuracy_on_wrong"] == 1.0
    # The unparsed verdict on a wrong attempt is not a right verdict.
    assert figures[3]["verdict_accuracy_on_wrong"] == 0.0 and figures[3]["final_accuracy"] == 0.0
    means = mean_outcomes("self_correct", figures)
    assert means["self_correct/turn1_accuracy"] == 0.5 and means["self_correct/attempts"] == 1.5
    assert means["self_correct/verdict_accuracy_on_correct"] == pytest.approx(2 / 3)
    assert means["self_correct/verdict_accuracy_on_wrong"] == pytest.approx(2 / 3)
    # An ungraded attempt leaves its figures out, never counts it wrong.
    assert outcomes(episodes[1], {0: None, 2: True})["turn1_accuracy"] is None


def test_eval_intervals_take_questions_as_units():
    samples = [{"question_id": q, "outcomes": {"final_accuracy": v}} for q, v in [(0, 1.0), (0, 0.0), (1, 1.0), (1, 1.0)]]
    summary = outcome_summary("self_correct", samples)
    assert summary["self_correct/final_accuracy"] == 0.75
    # Per question 0.5 and 1.0: mean 0.75, sd 0.354, stderr 0.25, t(0.975, 1) = 12.7: clipped to [0, 1].
    assert summary["self_correct/final_accuracy_lo"] == 0.0 and summary["self_correct/final_accuracy_hi"] == 1.0


def test_config_names_what_self_correct_needs():
    from cluster.config import ConfigError

    config = load_config("tests/configs/smoke.yaml", ["rollout.protocol=self_correct", "learner.credit=final_turn"])
    assert config.rollout.max_attempts == 2
    with pytest.raises(ConfigError, match="learner.credit=first_round does not know the episodes of rollout.protocol=self_correct"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=self_correct"])
    with pytest.raises(ConfigError, match="rollout.max_attempts must be >= 1"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=self_correct", "learner.credit=every_turn",
                                                 "rollout.max_attempts=0"])


class ScriptedPool:
    """Answers by the instruction it is sent and how often this very conversation was sent before."""

    def __init__(self, answer):
        self.answer, self.sent, self.calls = answer, Counter(), 0

    def begin(self, *key):
        pass

    def generate(self, conversations, sampling, use_adapter):
        self.calls += 1
        out = []
        for conversation in conversations:
            key = tuple(m["content"] for m in conversation)
            texts = [self.answer(conversation, self.sent[key] + j) for j in range(sampling.n)]
            self.sent[key] += sampling.n
            out.append([Completion([1], [2], text, [0.0], "stop", 0) for text in texts])
        return out


def _grade(texts, golds):
    return [f"\\boxed{{{gold}}}" in text for text, gold in zip(texts, golds)]


def _model(conversation, tries: int) -> str:
    """Attempts: one right, one wrong. A right attempt is doubted once before "correct"; a wrong one is judged
    wrong at once; a correction is wrong once, then right; a right correction is judged correct."""
    last = conversation[-1]["content"]
    if last == VERIFY_INSTRUCTION:
        judged = conversation[-2]["content"]
        if len(conversation) > 4:  # the verdict on a correction
            return "[VERIFY] correct"
        return ("[VERIFY] wrong" if tries == 0 else "[VERIFY] correct") if "\\boxed{4}" in judged else "[VERIFY] wrong"
    if last == CORRECT_INSTRUCTION:
        return WRONG_ANSWER if tries == 0 else RIGHT
    return RIGHT if tries == 0 else WRONG_ANSWER


def test_build_traces_keeps_the_papers_kinds_and_trains_model_turns_only():
    from cluster.traces import KINDS, build_traces

    spec = SelfCorrectSpec(samples_per_prompt=2)
    traces, counts = build_traces(ScriptedPool(_model), [Problem("2+2?", "4", 0)], spec, max_tries=3, grade=_grade)
    assert sorted(t.kind for t in traces) == sorted(KINDS)
    assert {k: counts[k] for k in KINDS} == dict.fromkeys(KINDS, 1)
    assert counts["attempts"] == 2 and counts["no_agreeing_verdict"] == counts["no_right_correction"] == 0
    assert counts["doubted_right"] == 1
    assert_accounted({**counts, "mix": {k: counts[k] for k in KINDS}})
    by_kind = {t.kind: t for t in traces}
    assert [text for _, text in by_kind["right->[correct]"].turns] == [RIGHT, "[VERIFY] correct"]
    assert [text for _, text in by_kind["right->[wrong]->right"].turns] == [RIGHT, "[VERIFY] wrong", RIGHT, "[VERIFY] correct"]
    assert [text for _, text in by_kind["wrong->[wrong]->right"].turns] == [WRONG_ANSWER, "[VERIFY] wrong", RIGHT, "[VERIFY] correct"]
    rows = by_kind["wrong->[wrong]->right"].rows("system")
    # One row per model turn: the response is the model's text; the instructions are only ever prompt.
    assert [r["response"] for r in rows] == [WRONG_ANSWER, "[VERIFY] wrong", RIGHT, "[VERIFY] correct"]
    assert [r["prompt"][-1]["content"] for r in rows[1:]] == [VERIFY_INSTRUCTION, CORRECT_INSTRUCTION, VERIFY_INSTRUCTION]
    assert [m["role"] for m in rows[3]["prompt"]] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert all(r["response"] not in (VERIFY_INSTRUCTION, CORRECT_INSTRUCTION) for r in rows)


def test_build_traces_ends_within_its_tries_when_no_verdict_agrees():
    from cluster.traces import KINDS, build_traces

    pool = ScriptedPool(lambda conversation, tries: "[VERIFY] maybe" if len(conversation) > 2 else RIGHT)
    traces, counts = build_traces(pool, [Problem("2+2?", "4", 0)], SelfCorrectSpec(samples_per_prompt=3), max_tries=4,
                                  grade=_grade)
    assert traces == [] and counts["no_agreeing_verdict"] == 3
    assert_accounted({**counts, "mix": {k: counts[k] for k in KINDS}})
    assert pool.calls == 1 + 4  # the attempts, then one batched call per try


def test_the_shipped_recipe_loads_for_both_stages():
    from cluster.config import SFTRunConfig

    rl = load_config("self-correct-toy")
    assert rl.rollout.protocol == "self_correct" and rl.learner.credit == "every_turn"
    assert rl.model.warm_start.verdict_accuracy == 0.7
    sft = load_config("self-correct-sft", [], SFTRunConfig)
    assert sft.data.path == rl.traces.path and sft.model.warm_start == rl.model.warm_start


def test_intervals_of_counts_are_not_clipped_like_shares():
    samples = [{"question_id": q, "outcomes": {"attempts": v}} for q, v in [(0, 1.0), (0, 2.0), (1, 2.0), (1, 2.0),
                                                                            (2, 1.0), (2, 1.0)]]
    summary = outcome_summary("self_correct", samples)
    assert summary["self_correct/attempts"] == pytest.approx(1.5)
    assert summary["self_correct/attempts_lo"] < 1.5 < summary["self_correct/attempts_hi"]
    assert summary["self_correct/attempts_hi"] > 2.0  # t(0.975, 2) * 0.289 = 1.24 above the mean
