"""A run survives its rollout workers: one killed with SIGKILL mid-round or one that hangs is replaced, its
requests are retried, and every sample of the step exists exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from tests.conftest import REPO

B, M, K = 2, 4, 2  # tests/configs/smoke.yaml


def process_titled(prefix: bytes, timeout_s: float) -> int | None:
    """PID of a process whose title starts with `prefix`: Ray titles an actor's process `ray::Class`, and
    `ray::Class.method` while it runs that method."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if f.read().startswith(prefix):
                            return int(entry)
                except OSError:
                    continue
        time.sleep(0.02)
    return None


def start_run(run_dir, tmp_path, *overrides) -> subprocess.Popen:
    """`motif train` in the background, returned once its first step is logged."""
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", "tests/configs/smoke.yaml", f"output_dir={run_dir}",
           f"model.tiny_model_dir={tmp_path / 'tiny'}", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def test_kill_a_rollout_worker_mid_round_and_the_run_completes(tmp_path):
    """2 rollout workers and 2 learner ranks end to end, with a LoRA rank vLLM has no kernel for (4: served as 8)."""
    run_dir = tmp_path / "run"
    proc = start_run(run_dir, tmp_path, "steps=3", "rollout.num_workers=2", "learner.num_ranks=2",
                     "learner.lora_rank=4", "learner.lora_alpha=8", "rollout.max_tokens=96")
    victim = process_titled(b"ray::RolloutWorker.generate", timeout_s=120)  # a round of step 2 is running
    assert victim is not None, "no rollout worker was seen generating"
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]
    assert "starting a replacement" in output

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert sum(m["rollout/worker_restarts"] for m in lines) == 1
    assert sum(m["rollout/retried_requests"] for m in lines) >= 1
    for m in lines:
        assert m["continuations"] == B * M * K and m["rollout/stale_dropped"] == 0
        samples = [json.loads(line) for line in (run_dir / "samples" / f"step-{m['step']}.jsonl").read_text().splitlines()]
        assert Counter(s["prompt"] for s in samples) == {p: M for p in range(B)}
        assert all(len(s["finals"]) == K for s in samples)
        assert {s["adapter_version"] for s in samples} == {m["step"] - 1}
    assert {s["worker"] for s in samples} == {0, 1}
    assert all(m["optimizer_steps"] == 1 and m["train_tokens"] > 0 for m in lines)
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_dead_learner_stops_the_run_and_names_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_run(run_dir, tmp_path, "steps=20", "checkpoint.every=1")
    victim = process_titled(b"ray::GRPOLearner", timeout_s=60)
    assert victim is not None, "no learner process found"
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, output[-3000:]
    assert "learner rank died" in output and f"motif train --config {run_dir / 'config.yaml'} --resume auto" in output
    assert "(raylet)" not in output and "Traceback" not in output  # the run's own message, not Ray's
    assert output.strip().splitlines()[-1].startswith("motif: a learner rank died")


def test_a_hung_learner_stops_the_run_with_the_resume_command(ray_session):
    """A rank stuck in a call (a collective waiting on a lost peer) ends the run after cluster.learner_timeout_s
    instead of hanging it."""
    import pytest
    import ray

    from learner.group import LearnerDied, LearnerGroup

    @ray.remote(num_cpus=0)
    class StuckRank:
        def save_checkpoint(self, folder):
            time.sleep(3600)

    group = LearnerGroup(lambda rank: StuckRank.remote(), 2, 4, 4, "resume with: motif train --resume auto",
                         call_timeout_s=1)
    started = time.monotonic()
    try:
        with pytest.raises(LearnerDied, match=r"did not finish the checkpoint within cluster.learner_timeout_s=1 s"
                                              r".*resume with: motif train --resume auto"):
            group.save_checkpoint("unused")
    finally:
        group.shutdown()
    assert time.monotonic() - started < 30


def test_a_hung_worker_is_replaced_and_its_requests_retried(ray_session, tiny_model):
    from rollout.actor import RolloutWorker
    from rollout.pool import RolloutPool
    from rollout.records import SamplingSpec

    def make_worker(index: int):
        return RolloutWorker.options(num_cpus=1).remote(tiny_model, index, max_lora_rank=8, max_model_len=512,
                                                        kv_cache_bytes=32 << 20, dtype="float32")

    pool = RolloutPool(make_worker, 2, request_timeout_s=5)
    try:
        pool.wait_ready(300)
        stuck = ray_session.get(pool.workers[0].pid.remote())
        conversations = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(6)]
        spec = SamplingSpec(n=2, temperature=1.0, max_tokens=8)
        pool.begin("test", 1)
        expected = pool.generate(conversations, spec)
        os.kill(stuck, signal.SIGSTOP)
        pool.begin("test", 1)
        results = pool.generate(conversations, spec)
        counts = pool.take_counters()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the pool has killed it already, unless the test failed
            os.kill(stuck, signal.SIGKILL)
        pool.shutdown()
    assert counts["rollout/worker_restarts"] == 1 and counts["rollout/retried_requests"] >= 1
    assert [len(group) for group in results] == [2] * 6
    # The retried shard ran under its own seed on the replacement: the same samples as before the hang.
    assert [[c.completion_ids for c in g] for g in results] == [[c.completion_ids for c in g] for g in expected]


def test_request_timeout_bounds_one_request_per_wave_of_the_engine():
    """A call's deadline grows with the waves of sequences its engine must run, so rollout.request_timeout_s
    means one request's time however many requests a worker's share holds."""
    from rollout.pool import RolloutPool

    pool = RolloutPool(lambda index: None, 1, request_timeout_s=10, concurrent_sequences=4)
    assert [pool.call_timeout(n) for n in (1, 4, 5, 8, 9)] == [10, 10, 20, 20, 30]


def test_requests_that_kill_every_worker_come_back_aborted(ray_session):
    """A poison shard (here: an actor that exits on every call, as an engine crashing on one prompt would) is
    tried MAX_ATTEMPTS times on fresh workers, then returned empty so the step can go on."""
    import ray

    from rollout.engine import ABORTED
    from rollout.pool import MAX_ATTEMPTS, RolloutPool
    from rollout.records import SamplingSpec

    @ray.remote(num_cpus=0)
    class CrashingWorker:
        def generate(self, conversations, spec, use_adapter, seed):
            os._exit(1)

    pool = RolloutPool(lambda index: CrashingWorker.remote(), 1)
    results = pool.generate([[{"role": "user", "content": "x"}]] * 3, SamplingSpec(n=2, max_tokens=4))
    counts = pool.take_counters()
    pool.shutdown()
    assert [[c.finish_reason for c in group] for group in results] == [[ABORTED, ABORTED]] * 3
    assert counts == {"rollout/worker_restarts": MAX_ATTEMPTS, "rollout/retried_requests": 3 * (MAX_ATTEMPTS - 1),
                      "rollout/failed_requests": 3}
