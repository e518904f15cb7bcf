"""Answer extraction, GSM8K gold, numeric grading and multi-line format rewards."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from rewards import (
    FORMATS,
    Grader,
    extract_answer,
    extract_progress,
    future_accuracy,
    grade,
    grade_batch,
    gsm8k_gold,
)
from tests.surface_forms import correct_forms, wrong_form
from tests.conftest import DATA


def test_last_balanced_boxed_wins():
    assert extract_answer("first \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{2} and a broken \\boxed{3") == "2"
    assert extract_answer("\\fbox{ 12 }") == "12"
    assert extract_answer("So the answer is 1,234.") == "1,234"
    assert extract_answer("Final Answer: The final answer is 12. I hope it is correct.") == "12"
    assert extract_answer("**Answer:** 3.5") == "3.5"
    assert extract_answer("She has 7 left.\n#### 7") == "7"
    assert extract_answer("the answer is: $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert extract_answer("no answer here") is None


@pytest.mark.parametrize("response,gold,want", [
    ("\\boxed{72}", "72", True),
    ("\\boxed{72.00}", "72", True),
    ("\\boxed{\\$1,200}", "1200", True),
    ("The answer is 18.", "18", True),
    ("\\boxed{125}", "25", False),  # the reference code's substring match accepted this
    ("\\boxed{25}", "125", False),
    ("\\boxed{7200}", "72", False),
    ("\\boxed{0.72}", "72", False),
    ("I think 72 but no box", "72", False),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac12", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\boxed{[1,2]}", "[1,2)", False),
    ("\\boxed{x = 3}", "3", True),
    ("\\boxed{025}", "25", True),
    ("\\boxed{25}", "025", True),
    ("\\boxed{5 \\text{ cm}}", "5", True),
    ("\\boxed{\\text{(B)}}", "B", True),
    ("\\boxed{C}", "B", False),
    ("\\boxed{\\text{Bob}}", "\\text{Evelyn}", False),
    ("\\boxed{q - p}", "p - q", False),
    ("\\boxed{\\mathbf{025}}", "25", True),
    ("\\[\\boxed{\\displaystyle \\text{(C)}}\\]", "\\text{(C)}", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{0.5}", "50\\%", False),
    ("\\boxed{[0, 1)}", "[0,1)", True),
    ("\\boxed{(0,1)}", "[0,1)", False),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
    ("Final Answer: The final answer is 12. I hope it is correct.", "12", True),
    ("She has 7 left.\n#### 7", "7", True),
])
def test_grade(response, gold, want):
    assert grade(response, gold) is want


def load_golds():
    golds = []
    with open(DATA / "gsm8k" / "test.jsonl") as f:
        golds += [("gsm8k", gsm8k_gold(json.loads(line)["answer"])) for line in f]
    for name in ("math500", "aime24"):
        with open(DATA / name / "test.jsonl") as f:
            golds += [(name, json.loads(line)["answer"]) for line in f]
    return golds


def test_every_dataset_gold_grades_correct_in_other_forms_and_wrong_when_perturbed():
    responses, golds, expected = [], [], []
    for dataset, gold in load_golds():
        for form, response in correct_forms(gold).items():
            responses.append(response), golds.append(gold), expected.append((dataset, form, True))
        responses.append(wrong_form(gold)), golds.append(gold), expected.append((dataset, "perturbed", False))
    results = grade_batch(responses, golds)
    counts, failures = Counter(), []
    for response, gold, (dataset, form, want), result in zip(responses, golds, expected, results):
        counts[(dataset, "right" if result.correct == want else "WRONG")] += 1
        if result.correct != want:
            failures.append(f"{dataset}/{form}: gold {gold!r} response {response[-80:]!r} -> {result.reason}")
    print("grading counts:", dict(sorted(counts.items())))
    assert len(responses) > 10_000
    assert not failures, f"{len(failures)} misgraded, e.g. " + "; ".join(failures[:5])


def test_format_rewards_match_multiline_blocks_only_once():
    good = "<reasoning>step one\nstep two</reasoning>\n<progress>we know x = 3\nand y = 4</progress>\n"
    assert FORMATS["reasoning_progress"](good) == 1.0
    assert FORMATS["reasoning_progress"](good + "<progress>again</progress>") == 0.0
    assert FORMATS["reasoning_progress"]("<progress>p</progress><reasoning>r</reasoning>") == 0.0
    assert FORMATS["reasoning_progress"]("<reasoning></reasoning><progress>p</progress>") == 0.0
    assert FORMATS["reasoning_answer"]("<reasoning>a\nb</reasoning>\n<answer>\\boxed{3}\n</answer>") == 1.0
    assert FORMATS["reasoning_answer"](good) == 0.0
    assert extract_progress(good) == "we know x = 3\nand y = 4"


def test_future_accuracy_is_mean_correctness_of_continuations():
    finals = ["\\boxed{5}", "\\boxed{6}", "\\boxed{5.0}", "nothing"]
    assert future_accuracy(finals, "5") == 0.5
    with pytest.raises(ValueError):
        future_accuracy([], "5")


HOSTILE = {
    "exponent_tower": "\\boxed{9^{9^{9^{9^{9^{9}}}}}}",
    "huge_text": "7" * 100_000,
    "huge_box": "\\boxed{" + "1+" * 50_000 + "1}",
    "deep_nesting": "\\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}",
    "unbalanced": "\\boxed{" * 5_000 + "3",
    "nul_bytes": "\\boxed{\x001\x00}\x00" * 100,
    "answer_is_spam": "the answer is " * 20_000,
}


def test_hostile_inputs_return_false_within_the_bound_and_pool_survives():
    grader = Grader(workers=2, timeout_s=1.0)
    try:
        start = time.monotonic()
        results = grader.grade_batch(list(HOSTILE.values()), ["3"] * len(HOSTILE))
        elapsed = time.monotonic() - start
        print("hostile:", {name: r.reason for name, r in zip(HOSTILE, results)}, f"{elapsed:.1f}s")
        assert not any(r.correct for r in results)
        assert elapsed < 1.0 * len(HOSTILE) + 10
        assert grader.reasons["timeout"] >= 1
        # The workers that were killed were replaced: normal grading still works.
        assert [r.correct for r in grader.grade_batch(["\\boxed{3}", "\\boxed{4}"], ["3", "3"])] == [True, False]
    finally:
        grader.close()


def test_grade_is_bounded_off_the_main_thread():
    out = {}
    worker = threading.Thread(target=lambda: out.update(result=grade(HOSTILE["exponent_tower"], "3")))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and out["result"] is False
    assert time.monotonic() - start < 30


def test_grade_is_bounded_inside_a_ray_actor(ray_session):
    @ray_session.remote(max_concurrency=2)
    class Judge:
        def grade(self, response, gold):
            from rewards import grade as bounded_grade

            start = time.monotonic()
            return bounded_grade(response, gold), time.monotonic() - start

    judge = Judge.remote()
    correct, elapsed = ray_session.get(judge.grade.remote(HOSTILE["exponent_tower"], "3"), timeout=120)
    assert correct is False and elapsed < 30
    assert ray_session.get(judge.grade.remote("\\boxed{\\frac{6}{4}}", "1.5"), timeout=60) == (True, pytest.approx(0, abs=30))
