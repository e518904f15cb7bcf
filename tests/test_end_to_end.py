"""`motif train` as a user runs it: real Ray, vLLM and DeepSpeed on the tiny model, 2 steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_motif_train_two_steps_writes_metrics_and_adapter(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "cluster.cli", "train", "--config", "cluster/configs/demo.yaml",
        "steps=2", f"output_dir={run_dir}", f"model.tiny_model_dir={tmp_path / 'tiny'}", "data.limit=16",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert [m["adapter_version"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("reward", "accuracy", "format_rate", "loss", "kl", "time_rollout", "time_learn", "time_sync"):
            assert isinstance(m[key], float), key
        assert m["continuations"] == 2 * 4 * 2  # B*m*k finals
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not list(run_dir.rglob("*.partial"))
    assert "step 2 |" in proc.stdout + proc.stderr
