"""`motif eval`: pass@k and maj@k against a hand computation, and real runs on shipped and custom datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.evaluation import pass_at_k, summarize
from tests.conftest import REPO


def scripted(question_id, answers, correct, tokens=(10, 20)):
    return [
        {"question_id": question_id, "sample": i, "gold": "5", "rounds": ["r1", "r2"], "tokens": list(tokens),
         "format_ok": i % 2 == 0, "truncated": a is None, "prompt_too_long": False, "answer": a, "correct": c}
        for i, (a, c) in enumerate(zip(answers, correct))
    ]


def test_pass_and_majority_match_a_hand_computation(tmp_path):
    # Question 0: 2 of 4 right; answers 5, 3, 3, 5 ("5.0" is the same number as "5").
    # Question 1: none right, one sample without an answer.
    rows = scripted(0, ["5", "3", "3", "5.0"], [True, False, False, True]) + \
        scripted(1, [None, "7", "7", "8"], [False, False, False, False])
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize([json.loads(line) for line in path.read_text().splitlines()], n=4)
    # pass@k = mean over questions of 1 - C(n-c, k)/C(n, k); question 1 contributes 0.
    assert summary["pass@1"] == pytest.approx((2 / 4) / 2)
    assert summary["pass@2"] == pytest.approx((1 - 1 / 6) / 2)
    assert summary["pass@3"] == pytest.approx(1 / 2) and summary["pass@4"] == pytest.approx(1 / 2)
    # maj@k over the first k samples, ties to the answer seen first:
    # q0: k=1 "5" right; k=2 tie 5/3 -> "5" right; k=3 "3" twice -> wrong; k=4 tie 2/2 -> "5" right.
    assert [summary[f"maj@{k}"] for k in (1, 2, 3, 4)] == [0.5, 0.5, 0.0, 0.5]
    assert summary["format_rate"] == 0.5
    assert summary["no_answer"] == 1 and summary["truncated"] == 1
    assert summary["mean_tokens_per_round"] == [10.0, 20.0]
    assert (summary["questions"], summary["samples"]) == (2, 8)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 3), (10, 3, 1), (10, 3, 4), (8, 7, 2)])
def test_unbiased_pass_at_k_equals_enumeration(n, c, k):
    from itertools import combinations

    subsets = list(combinations([True] * c + [False] * (n - c), k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def run_eval(tmp_path, *overrides):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cluster.cli", "eval", "--config", "cluster/configs/demo.yaml", "model.path=tiny",
           f"model.tiny_model_dir={tmp_path / 'tiny'}", "rollout.max_tokens=12", f"eval.output_dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return samples, json.loads((out / "summary.json").read_text()), proc.stdout


def test_motif_eval_on_a_shipped_dataset(tmp_path):
    samples, summary, stdout = run_eval(tmp_path, "eval.path=math500", "eval.limit=3", "eval.n=2", "eval.rounds=2")
    assert len(samples) == 3 * 2 and summary["questions"] == 3 and summary["n"] == 2
    assert {s["question_id"] for s in samples} == {0, 1, 2}
    assert all(len(s["rounds"]) == 2 and len(s["tokens"]) == 2 for s in samples)
    # The gold is MATH500's `answer` field, and every sample was graded.
    assert samples[0]["gold"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert all(s["grade"] in ("correct", "wrong", "no_answer") for s in samples)
    for key in ("pass@1", "pass@2", "maj@1", "maj@2", "format_rate", "mean_tokens_per_round", "no_answer", "truncated"):
        assert key in summary
    assert summary["dataset"] == "math500" and summary["rounds"] == 2
    assert "pass@1" in stdout


def test_motif_eval_on_a_custom_jsonl_with_other_field_names(tmp_path):
    data = tmp_path / "custom.jsonl"
    data.write_text(json.dumps({"prompt_text": "What is 2+3?", "solution": "5"}) + "\n"
                    + "{broken\n" + json.dumps({"prompt_text": "What is 4*4?", "solution": "16"}) + "\n")
    samples, summary, _ = run_eval(tmp_path, f"eval.path={data}", "data.question_field=prompt_text",
                                   "data.answer_field=solution", "eval.n=3", "eval.rounds=1")
    assert [s["gold"] for s in samples] == ["5"] * 3 + ["16"] * 3
    assert {s["question_id"] for s in samples} == {0, 2}  # row 1 was skipped, not fatal
    assert summary["questions"] == 2 and summary["samples"] == 6
