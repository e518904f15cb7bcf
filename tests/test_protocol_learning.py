"""Adaptive rounds from a warm start, as a user runs them (real Ray, vLLM, DeepSpeed): a short markovian run ends
easy questions before `max_rounds`. The warm start is the demo's, fine-tuned on both new protocols' traces
(tests/configs/protocols-toy.yaml); cluster/bench/markovian.py and cluster/bench/self_correct.py measure the
learning over seeds. (A self-correction run that raises held-out final accuracy needs a warm start that solves
single-round questions well: the recipe's takes about 12 minutes on 2 cores, the 250-step fine-tune here reached
a final accuracy of 0.09, too low to learn from in a short run.)"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cluster.config import load_config
from tests.conftest import REPO

CONFIG = "tests/configs/protocols-toy.yaml"
SFT_STEPS = 120


@pytest.fixture(scope="module")
def protocols_model(demo_warm_start, tmp_path_factory):
    """The demo's warm start, fine-tuned by `motif sft` on toy traces of both protocols (3 to 6 steps): single
    solutions, self-correction episodes whose verdicts are right 70% of the time, adaptive-rounds chains of at
    most 2 rounds. Continuing from a model that already computes keeps this to a couple of minutes."""
    from cluster.tasks.toy_task import sft_rows

    model, _ = demo_warm_start
    work = tmp_path_factory.mktemp("protocols-warm-start")
    rows = sft_rows(load_config(CONFIG).data.toy, 600, (1,), 0.06, seed=1, verdict_accuracy=0.7, markovian_rounds=2)
    (work / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    subprocess.run([sys.executable, "-m", "cluster.cli", "sft", "--config", "cluster/configs/self-correct-sft.yaml",
                    f"model.path={model}", f"data.path={work / 'rows.jsonl'}", f"steps={SFT_STEPS}",
                    f"output_dir={work}"], cwd=REPO, check=True, capture_output=True, timeout=1200,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
    toy = dataclasses.replace(load_config(CONFIG).data.toy, operations=3, max_operations=None)
    easy.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                            for p in toy_problems(toy, "test", 32)))
    run = tmp_path / "markovian"
    motif("train", f"model.path={protocols_model}", f"output_dir={run}", "steps=2", "eval.every=2",
          "rollout.protocol=markovian", "rollout.max_tokens=40", "learner.credit=every_round",
          f"eval.path={easy}", "eval.limit=32")
    ended = evals(run)[2]
    summary = json.loads((run / "eval" / "step-2" / "summary.json").read_text())
    # 3-step questions are done in round 1 of at most 2: most chains answer there.
    assert ended["eval/markovian/answered_early"] >= 0.8, ended
    assert summary["rounds_used"].get("1", 0) >= 0.8 * summary["samples"], summary["rounds_used"]
