"""The overlapped schedule (rollout.max_staleness = S, cluster/loop/overlap.py): the next steps' rollouts run while
a step trains, admitted only while they stay within S versions of the learner; samples outside the window are
dropped and counted; a push that fails, or workers that keep serving an old adapter, stop the run; a kill and a
resume train every prompt exactly once. S=0 trains what the synchronous loop does, bitwise: that one is
tests/test_behaviour_unchanged.py (single-overlapped).

The schedule's own tests run on stand-ins for the pool and the learner (a scripted pool whose adapter version is
what was last pushed to it, a learner that takes a while), so what was admitted when is known exactly; the last
test is a real run (Ray, vLLM, DeepSpeed) killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
import pytest

from cluster.config import ConfigError, load_config
from cluster.loop.overlap import Overlapped, StaleWeights, in_window
from cluster.loop.step import StepParts, StepRollout, prompt_batch
from cluster.spec import rollout_spec
from cluster.tasks.data import Problem, load_problems
from learner.advantages import ADVANTAGE_ESTIMATORS
from learner.credit import CREDIT
from rewards import RewardTerm, build_rewards
from rollout.protocols import PROTOCOLS
from rollout.records import Completion, Episode, Turn
from tests.conftest import REPO

GOOD, BAD = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>", "no tags"
PROBLEMS = [Problem(f"question {i}", "4", i) for i in range(8)]


class VersionedPool:
    """Serves the version last pushed to it (or, `ignores_pushes`, keeps serving version 0 while reporting the
    new digest, as a worker that silently failed to load would); records the learner's progress at each
    rollout's start."""

    def __init__(self, progress: list[int], ignores_pushes: bool = False, push_fails_at: int | None = None):
        self.version, self.digest, self.served = 0, "", (0, "")
        self.progress, self.ignores_pushes, self.push_fails_at = progress, ignores_pushes, push_fails_at
        self.started: dict[int, int] = {}  # step -> learner steps done when its rollout started

    def begin(self, kind, step, *refill):
        self.started[step] = self.progress[0]

    def generate(self, conversations, sampling, use_adapter=True):
        version, digest = self.served
        return [[Completion([1], [2, 3], GOOD if j % 2 else BAD, [0.0, 0.0], "stop", version, digest)
                 for j in range(sampling.n)] for _ in conversations]

    def take_counters(self):
        return {}

    def push(self, payload, digest, version):
        if version == self.push_fails_at:
            raise RuntimeError(f"rollout worker 0 loaded adapter digest old, not the {digest} sent for version {version}")
        self.version, self.digest = version, digest
        if not self.ignores_pushes:
            self.served = (version, digest)


class SlowLearner:
    """Takes a while per update, so rollouts run ahead as far as admission lets them."""

    def __init__(self, progress: list[int]):
        self.progress, self.trained = progress, []

    def train_step(self, samples, seed):
        time.sleep(0.05)
        self.trained.append(samples)
        self.progress[0] += 1
        return {"loss": 0.0}

    def adapter_payload(self, version):
        return f"digest-{version}", b"adapter"


def schedule(tmp_path, staleness: int, steps: int, **pool_options):
    config = load_config("tests/configs/smoke.yaml", ["rollout.rounds=1", "learner.credit=first_round",
                                                      f"rollout.max_staleness={staleness}", f"steps={steps}"])
    rewards = build_rewards([RewardTerm("format")], "reasoning_answer")
    progress = [0]
    pool, learner = VersionedPool(progress, **pool_options), SlowLearner(progress)
    parts = StepParts(config, pool, learner, PROTOCOLS["single"], rollout_spec(config, rewards), rewards,
                      ADVANTAGE_ESTIMATORS["grpo"], CREDIT["first_round"], False, tmp_path, False, PROBLEMS)
    return Overlapped(parts, PROBLEMS, 1, last=steps, version=0), pool, learner, config


def run_steps(overlapped, steps: int) -> list[dict]:
    metrics, version = [], 0
    try:
        for step in range(1, steps + 1):
            result = overlapped.step(step, version)
            version = step if result.trained else version
            metrics.append(result.metrics)
    finally:
        overlapped.close()
    return metrics


@pytest.mark.parametrize("staleness", [1, 2])
def test_rollouts_run_ahead_within_the_window_and_train_each_batch_once(tmp_path, staleness):
    steps = 8
    overlapped, pool, learner, config = schedule(tmp_path, staleness, steps)
    metrics = run_steps(overlapped, steps)
    assert not any(m.get("skipped_step") for m in metrics)
    # Admission: step j's rollout started once step j-1-S was done, and (rollouts being fast) no later than that.
    assert all(pool.started[j] >= j - 1 - staleness for j in range(1, steps + 1))
    assert max(j - 1 - pool.started[j] for j in range(1, steps + 1)) == staleness
    # Trained: at most S versions behind the learner, every one of them inside the window, each batch once.
    assert all(m["rollout/outside_window"] == 0 and m["rollout/staleness_max"] <= staleness for m in metrics)
    assert max(m["rollout/staleness_max"] for m in metrics) == staleness
    for j in range(1, steps + 1):
        records = [json.loads(line) for line in (tmp_path / f"step-{j}.jsonl").read_text().splitlines()]
        batch = prompt_batch(PROBLEMS, config.rollout.prompts_per_step, config.data.shuffle_seed, j - 1)
        assert Counter(r["question_id"] for r in records) == Counter(
            {p.row: config.rollout.samples_per_prompt for p in batch})
        assert all(j - 1 - r["adapter_version"] <= staleness for r in records)
    assert len(learner.trained) == steps


def test_a_failed_push_stops_the_run_instead_of_training_on_the_old_adapter(tmp_path):
    overlapped, pool, learner, _ = schedule(tmp_path, 1, 6, push_fails_at=2)
    with pytest.raises(RuntimeError, match="not the digest-2 sent for version 2"):
        run_steps(overlapped, 6)
    assert len(learner.trained) <= 3  # the steps admitted before the push failed, and none after


def test_workers_that_keep_serving_an_old_adapter_stop_the_run(tmp_path):
    """The pool reports the pushed digest but its samples carry version 0: each is dropped as stale
    (rollout/stale_dropped), and after S+1 such steps the run stops, naming why."""
    overlapped, pool, learner, _ = schedule(tmp_path, 1, 8, ignores_pushes=True)
    with pytest.raises(StaleWeights, match="not serving the adapters pushed to them"):
        run_steps(overlapped, 8)
    # Steps 1 and 2 sampled the base model, as they should (step 2's rollout ran beside step 1's update); steps 3
    # and 4 should have sampled version 1 or 2.
    assert len(learner.trained) == 2


def test_samples_outside_the_window_are_dropped_and_counted():
    def episode(prompt: int, version: int, digest: str) -> Episode:
        completion = Completion([1], [2], GOOD, [0.0], "stop", version, digest)
        return Episode(prompt, [Turn(completion, "q", 1, None, 1.0)])

    digests = {1: "d1", 2: "d2", 3: "d3"}
    episodes = [episode(0, 3, "d3"), episode(0, 1, "d1"), episode(1, 0, ""), episode(1, 2, "forged")]
    kept, figures = in_window(StepRollout([], episodes, {}, Counter(), 0.0), 3, 2, digests)
    assert kept.episodes == episodes[:2]  # version 0 is 3 behind; "forged" is not what was pushed as 2
    assert figures == {"rollout/outside_window": 2.0, "rollout/staleness_mean": 1.0, "rollout/staleness_max": 2.0}


def test_overlap_refuses_what_samples_inside_a_step():
    for extra in (["rollout.dynamic_sampling=true"], ["cluster.placement=colocate", "rollout.num_gpus=1",
                                                       "cluster.learner_num_gpus=1"]):
        with pytest.raises(ConfigError, match="rollout.max_staleness=1 overlaps rollouts with training"):
            load_config("tests/configs/smoke.yaml", ["rollout.max_staleness=1", *extra])
    with pytest.raises(ConfigError, match="rollout.max_staleness must be >= 0"):
        load_config("tests/configs/smoke.yaml", ["rollout.max_staleness=-1"])


HANG_AFTER_CHECKPOINT = '''
import time
from pathlib import Path

def brevity(sample):
    """Hangs, once the run has saved its step-4 checkpoint, until the test kills the run."""
    if (Path(__file__).parent / "run" / "checkpoints" / "step-00000004").exists():
        (Path(__file__).parent / "hanging").touch()
        time.sleep(600)
    return -len(sample.response) / 100
'''


def test_kill_and_resume_at_staleness_2_trains_every_prompt_exactly_once(tmp_path):
    (tmp_path / "rewards.py").write_text(HANG_AFTER_CHECKPOINT)
    run_dir, steps = tmp_path / "run", 8
    components = f"[{{name: format, weight: 0.5}}, {{name: '{tmp_path / 'rewards.py'}:brevity', timeout_s: 900}}]"
    args = ["--config", "tests/configs/smoke.yaml", f"output_dir={run_dir}", f"model.tiny_model_dir={tmp_path / 'tiny'}",
            f"reward.components={components}", "rollout.rounds=1", "learner.credit=first_round",
            "rollout.max_staleness=2", "checkpoint.every=2", f"steps={steps}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (tmp_path / "hanging").exists():
        assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its step-4 checkpoint"
        time.sleep(0.5)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and every Ray process it started
    killed.wait()
    ahead = run_dir / "checkpoints" / "step-00000004" / "rollouts-ahead.pkl"
    assert ahead.exists(), "the checkpoint saved none of the rollouts made ahead of their step"
    (tmp_path / "rewards.py").write_text(HANG_AFTER_CHECKPOINT.replace("step-00000004", "never"))

    resumed = subprocess.run([sys.executable, "-m", "cluster.cli", "train", *args, "--resume", "auto"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["step"] > 0] == list(range(1, steps + 1))
    assert all(m["rollout/staleness_max"] <= 2 and m["rollout/outside_window"] == 0 for m in metrics if m["step"])

    config = load_config("tests/configs/smoke.yaml", args[3:])
    problems, _ = load_problems(config.data)
    for j in range(1, steps + 1):
        records = [json.loads(line) for line in (run_dir / "samples" / f"step-{j}.jsonl").read_text().splitlines()]
        batch = prompt_batch(problems, config.rollout.prompts_per_step, config.data.shuffle_seed, j - 1)
        assert Counter(r["question_id"] for r in records) == Counter(
            {p.row: config.rollout.samples_per_prompt for p in batch}), f"step {j}"
    # Step 5 trained the rollout the checkpoint saved, sampled before version 4 existed: not a second sample.
    step5 = [json.loads(line) for line in (run_dir / "samples" / "step-5.jsonl").read_text().splitlines()]
    assert {r["adapter_version"] for r in step5} <= {2, 3}
