"""The toy task: reproducible, exact gold answers (checked by an independent evaluator and the grader),
disjoint splits, and warm-start traces in each protocol's format."""

from __future__ import annotations

import random
import re

import pytest

from cluster.config import DataConfig
from cluster.tasks.data import load_problems
from cluster.tasks.toy_task import ToyConfig, solution_turns, toy_problems
from rewards import FORMATS, extract_progress, grade_batch


def independent_answer(question: str) -> str:
    """Recompute the answer from the question text alone."""
    x = int(re.search(r"x=(\d)", question).group(1))
    for op, d in re.findall(r" [a-z]([+\-*])(\d)", question):
        x = {"+": x + int(d), "-": x - int(d), "*": x * int(d)}[op] % 10
    return str(x)


def test_problems_are_reproducible_exact_and_split_disjoint():
    config = ToyConfig(operations=5, seed=3)
    train, test = toy_problems(config, "train", 400), toy_problems(config, "test", 100)
    assert [p.question for p in train] == [p.question for p in toy_problems(config, "train", 400)]
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 400
    assert all(p.answer == independent_answer(p.question) for p in train + test)
    assert toy_problems(ToyConfig(operations=5, seed=4), "train", 5) != train[:5]


def test_difficulty_knob_sets_the_solution_length():
    short, long = (toy_problems(ToyConfig(operations=n), "train", 1)[0] for n in (2, 12))
    rng = random.Random(0)
    short_text = solution_turns(short, 1, 3, rng, 0.0)[0][1]
    long_text = solution_turns(long, 1, 3, rng, 0.0)[0][1]
    assert short_text.count("=") == 2 and long_text.count("=") == 12


def test_correct_traces_follow_each_protocol_and_grade_correct():
    problems = toy_problems(ToyConfig(operations=7), "test", 20)
    for rounds in (1, 2, 3):
        finals = []
        for p in problems:
            turns = solution_turns(p, rounds, 3, random.Random(0), error_rate=0.0)
            assert len(turns) == rounds
            for r, (conversation, response) in enumerate(turns, start=1):
                expected = "reasoning_answer" if r == rounds else "reasoning_progress"
                assert FORMATS[expected](response) == 1.0, response
                assert f"round {r} of {rounds}" in conversation[-1]["content"]
                if r > 1:  # the round continues from the previous round's progress, nothing else
                    assert extract_progress(turns[r - 2][1]) in conversation[-1]["content"]
            finals.append(turns[-1][1])
        assert all(g.correct for g in grade_batch(finals, [p.answer for p in problems]))


def test_error_rate_makes_traces_partly_wrong():
    problems = toy_problems(ToyConfig(operations=6), "train", 300)
    rng = random.Random(0)
    finals = [solution_turns(p, 1, 3, rng, error_rate=0.15)[0][1] for p in problems]
    accuracy = sum(g.correct for g in grade_batch(finals, [p.answer for p in problems])) / len(problems)
    assert 0.3 < accuracy < 0.6  # about 0.85**6 = 0.38, plus lucky recoveries


def test_toy_dataset_loads_by_name():
    problems, report = load_problems(DataConfig(path="toy", split="test", limit=10))
    assert len(problems) == 10 and report.loaded == 10
    assert all(p.gold == independent_answer(p.question) for p in problems)
    with pytest.raises(ValueError, match="split"):
        load_problems(DataConfig(path="toy", split="validation"))


def test_a_warm_start_for_several_difficulties_is_shared_by_them():
    """The learning grid's warm start: one per seed for every difficulty it lists (one cache key), different
    from a single-difficulty warm start, and its tokenizer corpus covers every listed difficulty."""
    import dataclasses

    from cluster.config import load_config
    from cluster.tasks.warm_start import warm_start_plan

    def plan(*overrides):
        config = load_config("demo", list(overrides))
        return warm_start_plan(config.model.warm_start, config.data.toy)

    mixed = "model.warm_start.operations=[4, 10]"
    tasks, corpus, key = plan(mixed, "data.toy.operations=4")
    assert [t.operations for t in tasks] == [4, 10]
    assert plan(mixed, "data.toy.operations=8")[2] == key  # shared by every difficulty of the grid
    assert plan(mixed, "model.warm_start.seed=1")[2] != key
    assert plan("data.toy.operations=4")[2] not in (key, plan("data.toy.operations=10")[2])
    assert any(" j" in text for text in corpus)  # a 10-operation question (steps a..j) shaped the tokenizer
    single_tasks, _, _ = plan("data.toy.operations=4")
    assert single_tasks == [dataclasses.replace(tasks[0])]


def test_a_mix_of_difficulties_spans_the_range_and_keeps_the_splits_apart():
    from cluster.config import ToyConfig
    from cluster.tasks.toy_task import toy_problems

    mix = ToyConfig(operations=3, max_operations=12)
    train, test = toy_problems(mix, "train", 400), toy_problems(mix, "test", 100)
    lengths = {len(p.steps) for p in train}
    assert lengths == set(range(3, 13))
    assert not {p.question for p in train} & {p.question for p in test}
    assert [p.question for p in toy_problems(mix, "train", 400)] == [p.question for p in train]
    with pytest.raises(ValueError, match="max_operations at least operations"):
        toy_problems(ToyConfig(operations=6, max_operations=4), "train", 1)


def test_adaptive_rounds_traces_answer_in_the_round_that_reaches_the_end():
    import random

    from cluster.config import ToyConfig
    from cluster.tasks.toy_task import markovian_turns, toy_problems

    problems = toy_problems(ToyConfig(operations=2, max_operations=10), "train", 60)
    for problem in problems:
        turns = markovian_turns(problem, 3, random.Random(0), 0.0, max_rounds=3)
        n = len(problem.steps)
        assert len(turns) == min(-(-n // 3), 3)  # rounds of 3 steps; the third finishes what is left
        assert turns[-1][1].endswith(f"\\boxed{{{problem.answer}}}</answer>")
        assert all("<progress>" in response for _, response in turns[:-1])
        for (_, before), (prompt, _) in zip(turns, turns[1:]):
            assert before.split("<progress>")[1].split("</progress>")[0] in prompt[-1]["content"]
    assert {len(markovian_turns(p, 3, random.Random(0), 0.0, 3)) for p in problems} == {1, 2, 3}


def test_rlmt_traces_think_then_state_the_last_step_and_value_and_the_warm_start_key_is_kept_when_off():
    import random

    from cluster.config import ToyConfig, load_config
    from cluster.tasks.toy_task import rlmt_turns, sft_rows, toy_problems
    from cluster.tasks.warm_start import warm_start_plan
    from rewards import FORMATS, grade

    for problem in toy_problems(ToyConfig(operations=4), "train", 20):
        (think_prompt, thought), (direct_prompt, direct) = rlmt_turns(problem, random.Random(0), 0.0)
        values = [problem.start, *problem.values()]
        op, d = problem.steps[-1]
        assert direct == f"d{op}{d}:{values[3]}={values[4]} \\boxed{{{problem.answer}}}"  # worked out by hand
        assert thought.endswith("</think>" + direct) and thought.count(":") == 5  # 4 thought, 1 restated
        assert FORMATS["think_response"](thought) and FORMATS["response"](direct) and grade(direct, problem.answer)
        assert think_prompt[-1] == direct_prompt[-1] == {"role": "user", "content": problem.question}
    assert len(sft_rows(ToyConfig(operations=4), 10, (), 0.0, rlmt=True)) == 20
    assert sft_rows(ToyConfig(), 10, (1, 3), 0.06) == sft_rows(ToyConfig(), 10, (1, 3), 0.06, rlmt=False)

    def key(*overrides):
        config = load_config("demo", list(overrides))
        return warm_start_plan(config.model.warm_start, config.data.toy)[2]

    assert key("model.warm_start.rlmt=false") == key() != key("model.warm_start.rlmt=true")


def test_rlmt_benchmark_names_each_kind_of_response_and_its_pairs_reject_each_kind_in_turn():
    from cluster.bench.rlmt import REJECTED, preference_pairs, response_kind
    from cluster.tasks.toy_task import ToyProblem

    # x=3, +4 -> 7, *3 -> 1: worked out by hand.
    problem = ToyProblem(start=3, steps=(("+", 4), ("*", 3)))
    assert problem.answer == "1"
    for text, kind in [("b*3:7=1 \\boxed{1}", "right"), ("<think>a+4:3=7 b*3:7=1</think>b*3:7=1 \\boxed{1}", "right"),
                       ("b*3:7=5 \\boxed{5}", "arithmetic"), ("b*3:5=5 \\boxed{5}", "slipped"),
                       ("b*3:7=1 \\boxed{4}", "mismatched"), ("a+4:3=7 \\boxed{7}", "other step"),
                       ("b*4:7=8 \\boxed{8}", "other step"), ("<think>a+4:3=7</think>", "malformed"),
                       ("the answer is \\boxed{1}", "malformed")]:
        assert response_kind(text, problem) == kind, text
    problems = toy_problems(ToyConfig(operations=4), "train", 30)
    pairs = preference_pairs(ToyConfig(operations=4), "train", 30, seed=0)
    assert [response_kind(chosen, p) for (_, chosen, _), p in zip(pairs, problems)] == ["right"] * 30
    rejected = [response_kind(r, p) for (_, _, r), p in zip(pairs, problems)]
    # "slipped" falls back to "mismatched" where no other value before the last step gives another result.
    assert all(kind == REJECTED[i % 3] or (REJECTED[i % 3] == "slipped" and kind == "mismatched")
               for i, kind in enumerate(rejected)), rejected
    assert rejected.count("slipped") >= 5
