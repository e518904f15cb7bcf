"""Learning that holds: first-wrong-step attribution of toy-task solutions (scripted traces written by the toy
task's own trace writer, then corrupted), its counts over an evaluation folder, and the held-out summary's
pass@1 interval against a hand computation. Pure Python: no Ray, vLLM or model."""

from __future__ import annotations

import json
import re
from math import sqrt

import pytest
import yaml

from cluster.bench.diagnosis import KINDS, attribute, diagnose, diagnose_folder, main
from cluster.evaluation import summarize, t_quantile
from cluster.tasks.toy_task import STEP_PATTERN, ToyConfig, parse_question, solution_turns, toy_problems

TOY = ToyConfig(operations=8, steps_per_round=3)
ROUNDS = 3  # rounds write steps a-c, d-f, g-h (the demo's shape)


class ScriptedErrors:
    """A stand-in for solution_turns' rng: the steps numbered in `wrong` (0-based, in writing order) are
    wrong, by the first other digit; later steps continue from the wrong value, as the writer does."""

    def __init__(self, *wrong: int):
        self.wrong, self.calls = set(wrong), 0

    def random(self) -> float:
        self.calls += 1
        return 0.0 if self.calls - 1 in self.wrong else 1.0

    def choice(self, options):
        return options[0]


def trace(problem, *wrong: int) -> list[str]:
    """One text per round, as a samples.jsonl record's "rounds"."""
    return [response for _, response in solution_turns(problem, ROUNDS, TOY.steps_per_round, ScriptedErrors(*wrong),
                                                        error_rate=0.5)]


@pytest.fixture(scope="module")
def problem():
    return toy_problems(TOY, "test", 1)[0]


def boxed(text: str) -> int:
    return int(re.search(r"\\boxed\{(\d+)\}", text)[1])


def test_parse_question_inverts_the_question(problem):
    assert parse_question(problem.question) == problem
    with pytest.raises(ValueError):
        parse_question("Start with x=7. Apply in order, mod 10: a+3 c*2.")


def test_a_correct_solution(problem):
    a = attribute(problem, trace(problem))
    assert (a.kind, a.label, a.answer_correct) == ("correct", "correct", True)
    assert attribute(problem.question, trace(problem)) == a  # the question's text is enough


def test_an_error_in_round_2_step_1(problem):
    texts = trace(problem, 3)  # step d, the first of round 2
    first_of_round_2 = STEP_PATTERN.search(texts[1])
    assert first_of_round_2[1] == "d" and int(first_of_round_2[5]) != problem.values()[3]
    a = attribute(problem, texts)
    assert (a.kind, a.round, a.position, a.operation, a.label) == ("wrong_value", 2, 1, 3, "wrong_value r2 s1")
    assert a.answer_correct == (boxed(texts[-1]) == int(problem.answer))
    # Same place, as seen by `correct` from the grader.
    assert attribute(problem, texts, correct=True).answer_correct is True


def test_an_error_only_in_the_final_answer(problem):
    texts = trace(problem)
    wrong = (int(problem.answer) + 1) % 10
    texts[-1] = texts[-1].replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{wrong}}}")
    a = attribute(problem, texts)
    assert (a.kind, a.round, a.position, a.answer_correct) == ("final_answer", 3, None, False)
    assert a.label == "final_answer r3"


def test_a_missing_progress_note(problem):
    texts = trace(problem)
    texts[0] = re.sub(r"<progress>.*</progress>", "", texts[0])
    a = attribute(problem, texts)
    assert (a.kind, a.round, a.label) == ("missing_progress", 1, "missing_progress r1")
    # Cut off by the token budget mid-note instead:
    texts[0] = trace(problem)[0].split("</progress>")[0]
    assert attribute(problem, texts, truncated=True).label == "truncated r1"


@pytest.mark.parametrize("corrupt,label", [
    (lambda t: t[:1] + [re.sub(r" d[^ <]+", "", t[1], count=1)] + t[2:], "wrong_operation r2 s1"),  # d skipped
    (lambda t: t[:1] + [re.sub(r"(d[+\-*]\d):(\d)", lambda m: f"{m[1]}:{(int(m[2]) + 1) % 10}", t[1])] + t[2:],
     "wrong_input r2 s1"),  # the note's value miscopied into round 2
    (lambda t: [re.sub(r"x=(\d)</progress>", lambda m: f"x={(int(m[1]) + 1) % 10}</progress>", t[0])] + t[1:],
     "wrong_progress r1"),
    (lambda t: [re.sub(r"after c", "after d", t[0])] + t[1:], "wrong_progress r1"),
    (lambda t: t[:2] + [re.sub(r"<answer>.*</answer>", "", t[2])], "no_answer r3"),
    (lambda t: t[:2] + [re.sub(r" h[^ <]+", "", t[2])], "missing_steps r3 s2"),  # answered after g
])
def test_other_first_failures(problem, corrupt, label):
    assert attribute(problem, corrupt(trace(problem))).label == label


def record(problem, question_id, texts, **extra):
    answer = re.search(r"\\boxed\{(\d+)\}", texts[-1])
    return {"question_id": question_id, "sample": 0, "gold": problem.answer, "rounds": texts,
            "truncated": False, "answer": answer and answer[1],
            "correct": bool(answer) and answer[1] == problem.answer, **extra}


def test_counts_over_an_evaluation_and_the_cli(tmp_path, capsys):
    problems = toy_problems(TOY, "test", 3)
    run = tmp_path / "run"
    config = {"data": {"path": "toy", "toy": {"operations": 8, "steps_per_round": 3}}, "eval": {"split": "test"}}
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    def write(step, records):
        folder = run / "eval" / f"step-{step}"
        folder.mkdir()
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(folder)

    before = write(0, [record(problems[0], 0, trace(problems[0], 3)), record(problems[1], 1, trace(problems[1], 3)),
                       record(problems[2], 2, trace(problems[2], 0)),
                       record(problems[2], 2, trace(problems[2]), failed=True)])  # question 2 left out
    after = write(40, [record(p, i, trace(p)) for i, p in enumerate(problems)])
    result = diagnose_folder(before)
    assert (result["samples"], result["excluded_samples"]) == (2, 2)
    assert result["kinds"]["wrong_value"] == 2 and set(result["kinds"]) == set(KINDS)
    assert result["locations"] == {"wrong_value r2 s1": 2} and result["first_failure_round"] == {"r2": 2}

    assert main([before, after]) == 0
    out = capsys.readouterr().out
    table, blob = out.split("\n{", 1)
    assert re.search(r"wrong_value r2 s1\s+2\s+0", table) and re.search(r"correct\s+0\s+3", table)
    assert json.loads("{" + blob)[after]["kinds"]["correct"] == 3

    # Samples of another toy config are refused, not miscounted.
    others = toy_problems(ToyConfig(operations=8, seed=5), "test", 3)
    assert [p.answer for p in others] != [p.answer for p in problems]
    with pytest.raises(ValueError, match="another toy config"):
        diagnose([record(p, i, trace(p)) for i, p in enumerate(others)], problems)
    assert main([str(tmp_path / "nowhere")]) == 2


def test_pass_at_1_interval_matches_a_hand_computation():
    # 4 questions, n = 4: 2, 3, 2 and 1 right -> per-question accuracy 0.5, 0.75, 0.5, 0.25.
    samples = [{"question_id": q, "sample": i, "gold": "5", "rounds": ["r"], "tokens": [3], "format_ok": True,
                "truncated": False, "prompt_too_long": False, "answer": "5", "correct": i < right}
               for q, right in enumerate([2, 3, 2, 1]) for i in range(4)]
    summary = summarize(samples, n=4)
    assert summary["pass@1"] == pytest.approx(0.5)
    # sd = sqrt((0 + 0.25^2 + 0 + 0.25^2) / 3), stderr = sd / sqrt(4), t(0.975, 3) = 3.182446 (tables).
    stderr = sqrt(0.125 / 3) / 2
    assert summary["pass@1_stderr"] == pytest.approx(stderr)
    assert summary["pass@1_lo"] == pytest.approx(0.5 - 3.182446 * stderr, abs=1e-6)
    assert summary["pass@1_hi"] == pytest.approx(0.5 + 3.182446 * stderr, abs=1e-6)
    assert (summary["pass@1_lo"], summary["pass@1_hi"]) == pytest.approx((0.175193, 0.824807), abs=1e-6)
    # One question: no interval (None is not logged as a metric); an interval never leaves [0, 1].
    assert summarize(samples[:4], n=4)["pass@1_lo"] is None
    clipped = summarize(samples[:8], n=4)
    assert clipped["pass@1_lo"] == 0.0 and clipped["pass@1_hi"] == 1.0


@pytest.mark.parametrize("df,table", [(1, 12.706205), (2, 4.302653), (9, 2.262157), (30, 2.042272), (10**6, 1.959966)])
def test_t_quantile_matches_tables(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-6)
