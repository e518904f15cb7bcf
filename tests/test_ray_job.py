"""`ray job submit` as the README shows it: a head of our own on loopback with token auth, a 2-step training
submitted with the project as its working dir, followed to SUCCEEDED, its logs read back."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import REPO
from tests.ray_head import start_head


@pytest.fixture
def ray_head():
    head = start_head()
    yield head
    head.stop()
    assert not head.processes(), "the head's processes outlived its stop"


def test_ray_job_submit_trains_on_the_cluster_it_runs_in(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    for _ in range(30):  # a fresh head refuses jobs until its job agent has registered: "try again later"
        submitted = ray_head.cli(
            "job", "submit", "--address", ray_head.dashboard, "--submission-id", "motif-test-job", "--no-wait",
            "--working-dir", REPO, "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1"}}),
            "--", "motif", "train", "--config", "tests/configs/smoke.yaml", "steps=2", f"output_dir={run_dir}",
            f"model.tiny_model_dir={tmp_path / 'tiny'}", timeout=300)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-3000:]

    deadline, status = time.monotonic() + 900, ""
    while time.monotonic() < deadline:
        result = ray_head.cli("job", "status", "--address", ray_head.dashboard, "motif-test-job")
        status = (result.stdout + result.stderr).lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = ray_head.cli("job", "logs", "--address", ray_head.dashboard, "motif-test-job").stdout
    assert "succeeded" in status, f"{status}\n{logs[-4000:]}"

    # The driver joined the head it was submitted to, trained 2 steps and said where everything is.
    assert "ray: joining the cluster at" in logs
    assert "step 2 |" in logs
    assert f"run folder: {run_dir} | plot: {run_dir / 'report.png'}" in logs
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # Library output went to the run's logs, from the head's worker processes.
    assert "Loading safetensors checkpoint shards" in (run_dir / "logs" / "rollout-0.log").read_text()
