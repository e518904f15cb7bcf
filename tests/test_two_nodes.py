"""Two Ray nodes for real on one machine (tests/netns.py: two network namespaces joined by a veth pair, a node in
each started with cluster/launch/ray-node.sh and a token): a run with a rollout worker and a learner rank on each
node (`cluster.placement=colocate`, `cluster.placement_strategy=SPREAD`), then the death of the worker node
mid-step and the resume on the node that is left. Root only; skipped with the reason elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests import netns
from tests.conftest import REPO

B, M, K = 2, 4, 2  # tests/configs/smoke.yaml
PLACE = ["rollout.num_workers=2", "learner.num_ranks=2", "cluster.placement=colocate",
         "cluster.placement_strategy=SPREAD", "checkpoint.every=1"]


@pytest.fixture(scope="module")
def nodes():
    try:
        two = netns.make_two_nodes()
    except netns.Unavailable as e:
        pytest.skip(str(e))
    try:
        # A colocated bundle is a worker + a rank (2 CPUs); the head can take the worker node's bundle when that
        # node dies, the worker node holds one.
        two.start_ray(head_cpus=4, worker_cpus=2)
        yield two
    finally:
        two.close()
        assert not os.path.exists(f"/run/netns/{two.head.name}") and not os.path.exists(f"/run/netns/{two.worker.name}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")  # the first run builds the tiny model there, the others reuse it


def train(nodes, tiny_dir, run_dir, *overrides, resume: bool = False) -> subprocess.Popen:
    """`motif train` as a driver on the head node, joining the cluster at the head's address."""
    args = ["--config", str(run_dir / "config.yaml"), "--resume", "auto"] if resume else \
        ["--config", "tests/configs/smoke.yaml", f"output_dir={run_dir}", f"model.tiny_model_dir={tiny_dir}",
         f"cluster.address={nodes.address}"]
    env = {**nodes.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return subprocess.Popen(nodes.head.command(sys.executable, "-m", "cluster.cli", "train", *args, *overrides),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def samples(run_dir, step: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples" / f"step-{step}.jsonl").read_text().splitlines()]


def steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def placed(job_actors: list[dict], cls: str) -> list[str]:
    """The node address of each `cls` actor that was placed (a replacement killed while pending was not)."""
    return sorted(a["ip"] for a in job_actors if a["cls"] == cls and a["ip"])


def actors_by_job(nodes) -> dict[str, list[dict]]:
    state = nodes.state()
    jobs: dict[str, list[dict]] = {}
    for a in state["actors"]:
        jobs.setdefault(a["job"], []).append({**a, "ip": state["nodes"].get(a["node"])})
    return {job: actors for job, actors in jobs.items() if any(a["cls"] == "RolloutWorker" for a in actors)}


def test_a_rollout_worker_and_a_learner_rank_on_each_node(nodes, tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(nodes, tiny_dir, run_dir, "steps=2", *PLACE)
    output, _ = proc.communicate(timeout=600)
    print(output)
    assert proc.returncode == 0, output[-4000:]
    assert f"ray: joining the cluster at {nodes.address}" in output
    assert steps(run_dir) == [1, 2]

    # Ray's own record of where the actors ran: a worker and a rank on each node.
    (job,) = actors_by_job(nodes).values()
    both = sorted([nodes.head.address, nodes.worker.address])
    assert placed(job, "RolloutWorker") == both and placed(job, "GRPOLearner") == both

    # Both workers sampled every step; at step 2 both served the adapter of step 1, whose bytes exist on one
    # node only (rank 0's object store): the other node's worker received them through the object store.
    digest = json.loads((run_dir / "checkpoints" / "step-00000001" / "driver.json").read_text())["adapter_digest"]
    for step in (1, 2):
        rows = samples(run_dir, step)
        assert Counter(s["prompt"] for s in rows) == {p: M for p in range(B)}
        assert {s["worker"] for s in rows} == {0, 1}
    assert {(s["worker"], s["adapter_version"], s["adapter_digest"]) for s in samples(run_dir, 2)} == \
        {(0, 1, digest), (1, 1, digest)}


def in_namespace_titled(ns: netns.Namespace, prefix: bytes, timeout_s: float) -> int | None:
    """A process of `ns` whose title starts with `prefix` (Ray titles a busy actor `ray::Class.method`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in ns.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(prefix):
                        return pid
            except OSError:
                continue
        time.sleep(0.05)
    return None


def kill_the_worker_node_during(nodes, proc: subprocess.Popen, title: bytes, what: str, timeout_s: float) -> str:
    """Once a process of the worker node is titled `title` (the run is there), that process and then the whole
    node go; returns the run's output."""
    try:
        busy = in_namespace_titled(nodes.worker, title, timeout_s=timeout_s)
        assert busy, f"no {what} on the worker node"
        os.kill(busy, signal.SIGKILL)
        nodes.worker.kill_all()
        output, _ = proc.communicate(timeout=600)
        print(output)
        return output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)


def test_the_worker_node_dies_mid_step_and_the_run_resumes_on_the_other(nodes, tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(nodes, tiny_dir, run_dir, "steps=2", *PLACE)
    checkpoint = run_dir / "checkpoints" / "step-00000001" / "driver.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not checkpoint.exists():
        proc.kill()
        pytest.fail("step 1 was not checkpointed")
    # Step 2's rollout is running on the worker node: the whole node goes, every process in its namespace (the
    # generating worker first, before its shard can finish).
    output = kill_the_worker_node_during(nodes, proc, b"ray::RolloutWorker.generate", "rollout", 120)
    assert proc.returncode == 1, output[-4000:]
    assert "starting a replacement" in output
    # The step's rollout finished on replacements on the head node; the lost rank ended the run.
    rows = samples(run_dir, 2)
    assert Counter(s["prompt"] for s in rows) == {p: M for p in range(B)} and {s["worker"] for s in rows} == {0, 1}
    resume = f"motif train --config {run_dir / 'config.yaml'} --resume auto"
    assert any(line.startswith("motif: ") and "learner rank died" in line and resume in line
               for line in output.splitlines()), output[-4000:]
    # Ray's record: the worker lost with the node was replaced on the head node.
    (job,) = [actors for actors in actors_by_job(nodes).values()
              if len([a for a in actors if a["cls"] == "RolloutWorker"]) > 2]
    workers = placed(job, "RolloutWorker")
    assert workers.count(nodes.worker.address) == 1 and workers.count(nodes.head.address) >= 2, job

    # A ZeRO-0 checkpoint of 2 ranks resumes on 1: the node that is left.
    proc = train(nodes, tiny_dir, run_dir, "learner.num_ranks=1", resume=True)
    output, _ = proc.communicate(timeout=600)
    print(output)
    assert proc.returncode == 0, output[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step-00000001'} at step 1" in output
    assert steps(run_dir) == [1, 2]
    rows = samples(run_dir, 2)
    assert {s["worker"] for s in rows} == {0, 1} and {s["adapter_version"] for s in rows} == {1}


def test_the_worker_node_dies_during_the_update_and_the_run_ends_with_the_resume_command(nodes, tiny_dir, tmp_path):
    """The node goes while its learner rank trains: the rank on the head is left in a collective with a dead peer
    (gloo: "Connection closed by peer"), which comes back as the rank's own error. Either way the run ends
    with one line naming the learner rank and the resume command, not a traceback."""
    nodes.start_worker(2)  # the node the test before killed, back as a new one
    run_dir = tmp_path / "run"
    # Longer updates (several mini-batches of longer samples) widen the window in which to catch one.
    proc = train(nodes, tiny_dir, run_dir, "steps=3", *PLACE, "learner.mini_batch_size=1",
                 "learner.micro_batch_size=1", "rollout.max_tokens=96")
    output = kill_the_worker_node_during(nodes, proc, b"ray::GRPOLearner.train_step", "update", 600)
    assert proc.returncode == 1, output[-4000:]
    resume = f"motif train --config {run_dir / 'config.yaml'} --resume auto"
    last = [line for line in output.splitlines() if line.startswith("motif: ")][-1]
    assert "learner rank" in last and "during the update" in last and last.endswith(resume), output[-4000:]
