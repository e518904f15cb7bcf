"""MOTIF and single-round GRPO train exactly as they did before the redesign (issue 21): a 2-step run on the
smoke config gives the recorded metrics and trains the recorded samples, token for token and advantage for
advantage, bitwise on CPU. The recordings (tests/golden/*.json) were made by tests/golden_run.py at commit
fdb70aa, before the redesign began; a deliberate change of behaviour is named here, with the fields it moves.

A length reward (tests/golden/length_reward.py) makes the untrained model's advantages non-zero, so the
losses and updates are exercised; every_round runs with one mini-batch per step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

GOLDEN = Path(REPO) / "tests" / "golden"
COMPONENTS = ("reward.components=[{name: format, weight: 0.5}, {name: accuracy}, "
              "{name: 'tests/golden/length_reward.py:length', weight: 0.3}]")
RUNS = {
    "motif-first_round": ["learner.credit=first_round"],
    "motif-every_round": ["learner.credit=every_round", "learner.mini_batch_size=64"],
    "single": ["rollout.rounds=1"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_training_is_bitwise_unchanged(tmp_path, name):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "tests.golden_run", str(out), "--config", "tests/configs/smoke.yaml",
           f"output_dir={tmp_path / 'run'}", f"model.tiny_model_dir={tmp_path / 'tiny'}", COMPONENTS, *RUNS[name]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    now, then = json.loads(out.read_text()), json.loads((GOLDEN / f"{name}.json").read_text())
    assert len(now["trained"]) == len(then["trained"]) == 2
    for step, (mine, recorded) in enumerate(zip(now["trained"], then["trained"]), 1):
        assert mine == recorded, f"step {step}: the trained samples differ"
    assert now["metrics"] == then["metrics"]
