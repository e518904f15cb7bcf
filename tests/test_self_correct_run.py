"""Self-correction as a user runs it, on the tiny model with real Ray, vLLM and DeepSpeed: `motif build-traces`
writes its rows and its counts, and a `motif train` step with rollout.protocol=self_correct trains, logs its
figures and evaluates with them. (The random tiny model states no verdict, so stage 1 completes nothing and
every episode ends after one attempt: the counts and the bounds are what is checked here; learning is
benchmarked by cluster/bench/self_correct.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SELF_CORRECT = ["rollout.protocol=self_correct", "learner.credit=every_turn", "rollout.max_tokens=16"]


def motif(tmp_path, command, *overrides):
    cmd = [sys.executable, "-m", "cluster.cli", command, "--config", "tests/configs/smoke.yaml",
           f"model.tiny_model_dir={tmp_path / 'tiny'}", *SELF_CORRECT, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_accounted(summary: dict) -> None:
    """Every attempt is a kept trace or counted where it stopped: the graded ones whose verdict agreed and
    said wrong, with the right ones doubted on the way, are exactly the corrections that were looked for."""
    mix = summary["mix"]
    graded = summary["attempts"] - summary["ungraded"]
    corrections = graded - summary["no_agreeing_verdict"] - mix["right->[correct]"] + summary["doubted_right"]
    assert corrections == summary["no_right_correction"] + summary["no_final_verdict"] \
        + mix["wrong->[wrong]->right"] + mix["right->[wrong]->right"]


def test_build_traces_then_a_self_correction_step(tmp_path):
    traces = tmp_path / "traces.jsonl"
    motif(tmp_path, "build-traces", "data.limit=2", "rollout.samples_per_prompt=2", "traces.max_tries=2",
          f"traces.path={traces}", f"output_dir={tmp_path / 'stage1'}")
    summary = json.loads(traces.with_suffix(".summary.json").read_text())
    assert summary["questions"] == 2 and summary["attempts"] == 4
    assert summary["traces"] == sum(summary["mix"].values())
    assert len(traces.read_text().splitlines()) == summary["rows"]
    assert_accounted(summary)

    run = tmp_path / "run"
    motif(tmp_path, "train", "steps=1", "eval.every=1", "eval.limit=2", "eval.n=2", f"output_dir={run}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = next(r for r in rows if r["step"] == 1)
    assert {"self_correct/turn1_accuracy", "self_correct/final_accuracy", "self_correct/attempts",
            "rollout/unparsed_verdicts"} <= trained.keys()
    assert 1 <= trained["self_correct/attempts"] <= 2 and trained["train_tokens"] > 0
    assert "eval/self_correct/final_accuracy" in rows[0] and "eval/self_correct/final_accuracy_lo" in rows[0]
    for line in (run / "samples" / "step-1.jsonl").read_text().splitlines():
        turns = json.loads(line)["turns"]
        # Attempt, verdict, (correction, verdict): the reward saw the last attempt.
        assert [t["kind"] for t in turns] == ["response", "verdict"] * (len(turns) // 2)
        assert json.loads(line)["finals"] == [turns[-2]["text"]]
