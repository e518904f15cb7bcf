"""Answer extraction, GSM8K gold, numeric grading and multi-line format rewards."""

from __future__ import annotations

import json

import pytest

from rewards import extract_answer, extract_progress, final_round_format, future_accuracy, grade, gsm8k_gold, intermediate_round_format
from tests.conftest import GSM8K_TRAIN


def test_last_balanced_boxed_wins():
    assert extract_answer("first \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{2} and a broken \\boxed{3") == "2"
    assert extract_answer("\\fbox{ 12 }") == "12"
    assert extract_answer("So the answer is 1,234.") == "1,234"
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
])
def test_grade(response, gold, want):
    assert grade(response, gold) is want


def test_gsm8k_gold_rows_grade_correct_and_perturbed_wrong():
    with open(GSM8K_TRAIN) as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    right = sum(grade(f"<answer>\\boxed{{{gsm8k_gold(r['answer'])}}}</answer>", gsm8k_gold(r["answer"])) for r in rows)
    wrong = sum(grade(f"\\boxed{{{gsm8k_gold(r['answer'])}1}}", gsm8k_gold(r["answer"])) for r in rows)
    assert (right, wrong) == (len(rows), 0)
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker")


def test_format_rewards_match_multiline_blocks_only_once():
    good = "<reasoning>step one\nstep two</reasoning>\n<progress>we know x = 3\nand y = 4</progress>\n"
    assert intermediate_round_format(good) == 1.0
    assert intermediate_round_format(good + "<progress>again</progress>") == 0.0
    assert intermediate_round_format("<progress>p</progress><reasoning>r</reasoning>") == 0.0
    assert intermediate_round_format("<reasoning></reasoning><progress>p</progress>") == 0.0
    assert final_round_format("<reasoning>a\nb</reasoning>\n<answer>\\boxed{3}\n</answer>") == 1.0
    assert final_round_format(good) == 0.0
    assert extract_progress(good) == "we know x = 3\nand y = 4"


def test_future_accuracy_is_mean_correctness_of_continuations():
    finals = ["\\boxed{5}", "\\boxed{6}", "\\boxed{5.0}", "nothing"]
    assert future_accuracy(finals, "5") == 0.5
    with pytest.raises(ValueError):
        future_accuracy([], "5")
