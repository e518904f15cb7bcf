"""Checkpoints and exact resume: 2 steps + a crash while writing the next checkpoint + `--resume auto` + 2 steps
write what 4 straight steps write (metrics, sampled texts, adapter), bitwise on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_end_to_end import USER_REWARD, jsonl_scalars, tensorboard_scalars

CRASH_WHILE_SAVING = """
import os, signal, sys
from cluster.checkpoint import Checkpoints

def write(folder):
    (folder / "learner").mkdir()
    (folder / "learner" / "half-written").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)

Checkpoints(sys.argv[1], keep=2).save(3, {"step": 3}, write)
"""


def train(tmp_path, run_dir, *args, expect: int = 0):
    (tmp_path / "my_rewards.py").write_text(USER_REWARD)
    components = f"[{{name: format, weight: 0.5}}, {{name: '{tmp_path / 'my_rewards.py'}:brevity', weight: 1.0}}]"
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", "tests/configs/smoke.yaml", f"output_dir={run_dir}",
           f"model.tiny_model_dir={tmp_path / 'tiny'}", f"reward.components={components}", "learner.mini_batch_size=4",
           "learner.micro_batch_size=2", "checkpoint.every=1", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == expect, proc.stderr[-4000:]
    return proc


def deterministic_metrics(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith("time_")} for m in lines]


def test_resume_after_a_crash_mid_checkpoint_reproduces_the_straight_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tmp_path, straight, "steps=4")
    train(tmp_path, resumed, "steps=2")
    checkpoints = resumed / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]

    # Killed while writing step 3's checkpoint: the partial folder is left behind, never taken for a checkpoint.
    crash = subprocess.run([sys.executable, "-c", CRASH_WHILE_SAVING, str(checkpoints)], cwd=REPO)
    assert crash.returncode == -9
    assert (checkpoints / "step-00000003.partial").is_dir() and not (checkpoints / "step-00000003").exists()

    proc = train(tmp_path, resumed, "steps=4", "--resume", "auto")
    assert f"resumed from {checkpoints / 'step-00000002'} at step 2" in proc.stdout + proc.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003", "step-00000004"]  # keep=2

    expected = deterministic_metrics(straight)
    assert [m["step"] for m in expected] == [1, 2, 3, 4]
    assert any(m["loss"] != 0 for m in expected), "no learning signal: the comparison would be vacuous"
    assert deterministic_metrics(resumed) == expected
    # TensorBoard drops the events the crashed run wrote after its checkpoint: each step once, as in the jsonl.
    assert tensorboard_scalars(resumed) == jsonl_scalars(resumed)
    for step in range(1, 5):
        name = f"samples/step-{step}.jsonl"
        assert (resumed / name).read_text() == (straight / name).read_text(), name
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (resumed / "adapter" / name).read_bytes() == (straight / "adapter" / name).read_bytes()

    # The folder now belongs to that run: a fresh run into it is refused and changes nothing, and a resume with
    # another sampling seed is refused naming the field. Both before Ray starts.
    before = {p.name: (p / "driver.json").read_bytes() for p in checkpoints.iterdir()}
    refused = train(tmp_path, resumed, "steps=20", expect=2)
    assert "holds another run's checkpoints (step-00000003, step-00000004)" in refused.stderr
    assert "--resume auto" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: (p / "driver.json").read_bytes() for p in checkpoints.iterdir()} == before
    reseeded = train(tmp_path, resumed, "steps=6", "rollout.seed=1", "--resume", "auto", expect=2)
    assert "rollout.seed: checkpoint 0, now 1" in reseeded.stderr
    assert {p.name: (p / "driver.json").read_bytes() for p in checkpoints.iterdir()} == before


def test_learner_ranks_may_shrink_on_resume_only_from_zero_stage_0():
    """DeepSpeed loads a ZeRO-0 checkpoint on fewer ranks (the optimizer state is whole in rank 0's file; run for
    real across two nodes in tests/test_two_nodes.py) and refuses another world size at ZeRO 1-3."""
    from cluster.checkpoint import resume_fields, resume_mismatches
    from cluster.config import load_config, to_dict

    def fields(ranks: int, stage: int) -> dict:
        return resume_fields(to_dict(load_config("tests/configs/smoke.yaml", [f"learner.num_ranks={ranks}",
                                                                               f"learner.zero_stage={stage}"])))

    assert resume_mismatches(fields(2, 0), fields(1, 0)) == []
    assert resume_mismatches(fields(2, 0), fields(3, 0)) == [
        "learner.num_ranks: checkpoint 2, now 3 (a ZeRO-0 checkpoint resumes on as many ranks or fewer: each rank "
        "restores its own RNG state)"]
    assert resume_mismatches(fields(2, 1), fields(1, 1)) == [
        "learner.num_ranks: checkpoint 2, now 1 (ZeRO 1-3 partition the optimizer state per rank)"]
    assert resume_mismatches(fields(2, 3), fields(2, 3)) == []
    assert resume_mismatches(fields(1, 0), fields(1, 3)) == [
        "learner.zero_stage: checkpoint 0, now 3 (DeepSpeed lays out the optimizer state differently per stage)"]


def test_resume_compares_the_warm_start_but_not_where_it_is_cached():
    from cluster.checkpoint import resume_fields, resume_mismatches
    from cluster.config import load_config, to_dict

    def fields(*overrides: str) -> dict:
        return resume_fields(to_dict(load_config("demo", list(overrides))))

    assert resume_mismatches(fields(), fields("model.warm_start.dir=/elsewhere")) == []
    assert [m.split(":")[0] for m in resume_mismatches(fields(), fields("model.warm_start.seed=1"))] == [
        "model.warm_start"]
    # A checkpoint written before warm_start.operations existed resumes while it is unset, not once it is set.
    old = fields()
    old["model.warm_start"] = {k: v for k, v in old["model.warm_start"].items() if k != "operations"}
    assert resume_mismatches(old, fields()) == []
    assert resume_mismatches(old, fields("model.warm_start.operations=[4, 8]")) != []


def test_motivation_written_as_a_bool_resumes_as_its_mode():
    """reward.motivation was true/false before its modes: a checkpoint that recorded true resumes as consistent
    (and false as none), and one that recorded consistent resumes from a config that still says true."""
    from cluster.checkpoint import resume_fields, resume_mismatches
    from cluster.config import load_config, to_dict

    def fields(motivation) -> dict:
        return resume_fields(to_dict(load_config("demo", [f"reward.motivation={motivation}"])))

    def recorded_as(written: bool) -> dict:
        old = fields("none")
        old["reward"] = {**old["reward"], "motivation": written}
        return old

    assert resume_mismatches(recorded_as(True), fields("consistent")) == []
    assert resume_mismatches(recorded_as(False), fields("none")) == []
    assert resume_mismatches(fields("consistent"), fields("true")) == []
    assert [m.split(":")[0] for m in resume_mismatches(recorded_as(True), fields("misleading"))] == ["reward"]
