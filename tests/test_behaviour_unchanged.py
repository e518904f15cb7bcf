"""MOTIF and single-round GRPO train exactly as they did before the redesign (issue 21): a 2-step run on the
smoke config gives the recorded metrics and trains the recorded samples, token for token and advantage for
advantage, bitwise on CPU. The recordings (tests/golden/*.json) were made by tests/golden_run.py at commit
fdb70aa, before the redesign began; a deliberate change of behaviour is named here, with the fields it moves.

Deliberate changes, named; the run they move was re-recorded, and is checked against its recording from before
the redesign (motif-every_round.before-issue-21.json) for exactly what they move (UPDATE_FIELDS): under
every_round the continuation chains are credited by their final answers' scores under the configured rewards
(issue 21, item 3), no longer by a second math grading, and a chain whose advantage is 0 is trained as a root
with advantage 0 always was (defect 3). On the untrained model the old credit saw every chain wrong and
trained none; now the length and format of the answers rank them. Step 1 is the same rollout, rewards and
round-1 samples; the chains are added.

Measurements added since, which move nothing (ADDED_METRICS): rollout/logprob_diff (issue 23), the mean |learner -
vLLM| logprob over the trained tokens, below 1e-4 in every run (round 1 at temperature 1, the continuation
rounds at 0.8).

The runs pin rollout.adapter_serving=lora, the serving they were recorded under. Adapters merged into the base
weights (the CPU default since issue 24: twice as fast to sample) sample what PEFT's merge_and_unload of the
adapter samples, bitwise: tests/test_merged_serving.py.

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

UPDATE_FIELDS = {"loss", "kl", "grad_norm", "train_tokens", "reward/unscored_finals"}  # over the trained tokens
ADDED_METRICS = {"rollout/logprob_diff"}


def changed_fields(now: dict, before: dict) -> set[str]:
    return {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}


# The overlapped schedule (issue 24) at rollout.max_staleness=0 trains what the synchronous one does; it adds its
# window's figures.
OVERLAPPED = {"single-overlapped": "single"}
WINDOW_METRICS = {"rollout/outside_window", "rollout/staleness_mean", "rollout/staleness_max"}


@pytest.mark.parametrize("name", sorted(RUNS) + sorted(OVERLAPPED))
def test_training_is_bitwise_unchanged(tmp_path, name):
    recorded = OVERLAPPED.get(name, name)
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "tests.golden_run", str(out), *(["--overlapped"] if name in OVERLAPPED else []),
           "--config", "tests/configs/smoke.yaml", f"output_dir={tmp_path / 'run'}",
           f"model.tiny_model_dir={tmp_path / 'tiny'}", COMPONENTS, "rollout.adapter_serving=lora", *RUNS[recorded]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    now, then = json.loads(out.read_text()), json.loads((GOLDEN / f"{recorded}.json").read_text())
    if name in OVERLAPPED:
        for step in now["metrics"]:
            assert step["rollout/outside_window"] == step["rollout/staleness_max"] == 0
            for key in WINDOW_METRICS:
                del step[key]
    assert len(now["trained"]) == len(then["trained"]) == 2
    for step, (mine, recorded) in enumerate(zip(now["trained"], then["trained"]), 1):
        assert mine == recorded, f"step {step}: the trained samples differ"
    for step in now["metrics"]:
        assert step.keys() >= ADDED_METRICS and step["rollout/logprob_diff"] < 1e-4
    metrics = [{k: v for k, v in m.items() if k not in ADDED_METRICS} for m in now["metrics"]]
    assert metrics == then["metrics"]
    if name == "motif-every_round":
        before = json.loads((GOLDEN / f"{name}.before-issue-21.json").read_text())
        round_one = len(before["trained"][0])
        assert now["trained"][0][:round_one] == before["trained"][0]
        assert changed_fields(metrics[0], before["metrics"][0]) <= UPDATE_FIELDS
