"""The new protocols from a warm start, as a user runs them (real Ray, vLLM, DeepSpeed): a short markovian run
ends easy questions before `max_rounds`, and a short self-correction run raises held-out final accuracy. The
warm start is the demo's, fine-tuned on both protocols' traces (tests/configs/protocols-toy.yaml);
cluster/bench/markovian.py and cluster/bench/self_correct.py measure the learning over seeds."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from cluster.config import load_config
from tests.conftest import REPO

CONFIG = "tests/configs/protocols-toy.yaml"
SFT_STEPS = 300


def easy_task():
    """The config's task at 3 steps a question: one round of 3 steps solves it."""
    return dataclasses.replace(load_config(CONFIG).data.toy, operations=3, max_operations=None)


@pytest.fixture(scope="module")
def protocols_model(demo_warm_start, tmp_path_factory):
    """The demo's warm start, fine-tuned by `motif sft` on toy traces of both protocols: single solutions and
    self-correction episodes (verdicts right 70% of the time) of 3 steps, and adaptive-rounds chains of 3 to 6
    steps in at most 2 rounds. The demo's model writes MOTIF's rounds; it takes these 300 steps at lr 2e-3 to
    solve in one round under self-correction's prompts (120 steps at 5e-4 left turn-1 accuracy at 0.11, 0.82
    after these), and continuing from a model that computes keeps it to about two minutes."""
    from cluster.tasks.toy_task import sft_rows

    model, _ = demo_warm_start
    work = tmp_path_factory.mktemp("protocols-warm-start")
    rows = (sft_rows(easy_task(), 600, (1,), 0.06, seed=1, verdict_accuracy=0.7)
            + sft_rows(load_config(CONFIG).data.toy, 600, (), 0.06, seed=2, markovian_rounds=2))
    random.Random(1).shuffle(rows)
    (work / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    subprocess.run([sys.executable, "-m", "cluster.cli", "sft", "--config", "cluster/configs/self-correct-sft.yaml",
                    f"model.path={model}", f"data.path={work / 'rows.jsonl'}", f"steps={SFT_STEPS}",
                    "learner.learning_rate=2e-3", f"output_dir={work}"], cwd=REPO, check=True, capture_output=True,
                   timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return work / "model"


def motif(command: str, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "cluster.cli", command, "--config", CONFIG, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def evals(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "eval/pass@1" in m}


def test_adaptive_rounds_end_easy_questions_before_max_rounds(protocols_model, tmp_path):
    from cluster.tasks.toy_task import toy_problems

    easy = tmp_path / "easy.jsonl"  # held out as a file: the run trains on the config's mix of 3 to 6 steps
    easy.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                            for p in toy_problems(easy_task(), "test", 32)))
    run = tmp_path / "markovian"
    motif("train", f"model.path={protocols_model}", f"output_dir={run}", "steps=2", "eval.every=2",
          "rollout.protocol=markovian", "rollout.max_tokens=40", "learner.credit=every_round",
          f"eval.path={easy}", "eval.limit=32")
    ended = evals(run)[2]
    summary = json.loads((run / "eval" / "step-2" / "summary.json").read_text())
    # 3-step questions are done in round 1 of at most 2: most chains answer there.
    assert ended["eval/markovian/answered_early"] >= 0.8, ended
    assert summary["rounds_used"].get("1", 0) >= 0.8 * summary["samples"], summary["rounds_used"]


def test_self_correction_raises_held_out_final_accuracy(protocols_model, tmp_path):
    run = tmp_path / "self-correct"
    motif("train", f"model.path={protocols_model}", f"output_dir={run}", "steps=20", "eval.every=20",
          "data.toy.operations=3", "data.toy.max_operations=null", "eval.limit=64")
    before, after = evals(run)[0], evals(run)[20]
    figures = {step: {k.rsplit("/", 1)[1]: round(v, 3) for k, v in m.items() if k.startswith("eval/self_correct/")
                      and not k.endswith(("_lo", "_hi"))} for step, m in ((0, before), (20, after))}
    print("held-out self-correction figures, step 0 and step 20:", figures)
    # Here it gains by stopping its corrections (0.723 -> 0.816, attempts 1.39 -> 1.00 when recorded): its verdicts
    # carry little information, so a correction broke more answers than it fixed (the bench's finding too).
    # The final answer is the one graded: final accuracy is pass@1.
    assert before["eval/self_correct/final_accuracy"] == before["eval/pass@1"]
    assert after["eval/self_correct/final_accuracy"] >= before["eval/self_correct/final_accuracy"] + 0.03, figures
