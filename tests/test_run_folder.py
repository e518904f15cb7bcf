"""A run folder belongs to one run at a time: a resume is checked against what the checkpoint's run really
used, a refused claim changes nothing, and a second process on a live run's folder is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

SMOKE = "tests/configs/smoke.yaml"

# Claims the folder (resuming its checkpoint), starts writing the next one, then holds on until stdin closes.
LIVE_RUN = """
import sys
from cluster.checkpoint import Checkpoints, claim
from cluster.config import load_config, to_dict

checkpoints = Checkpoints(sys.argv[1], keep=2)
claim(checkpoints, to_dict(load_config(sys.argv[2], [])), "auto", "hint")
(checkpoints.root / "step-00000002.partial" / "learner").mkdir(parents=True)
(checkpoints.root / "step-00000002.partial" / "learner" / "half-written").write_bytes(b"x" * 1000)
print("ready", flush=True)
sys.stdin.read()
"""


def settings(*overrides: str) -> dict:
    from cluster.config import load_config, to_dict

    return to_dict(load_config(SMOKE, list(overrides)))


def fields(*overrides: str) -> dict:
    from cluster.checkpoint import resume_fields

    return resume_fields(settings(*overrides))


def saved_run(root):
    """A folder holding run 'first''s checkpoint at step 1, and what a crash of it left behind."""
    from cluster.checkpoint import Checkpoints, resume_fields

    checkpoints = Checkpoints(root, keep=2)
    checkpoints.save(1, {"step": 1, "run_id": "first", "config": resume_fields(settings())},
                     lambda folder: (folder / "learner").mkdir(parents=True))
    (checkpoints.root / "step-00000002.partial").mkdir()
    return checkpoints


def contents(root) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_a_checkpoint_written_before_learner_credit_resumes_only_as_first_round():
    from cluster.checkpoint import resume_mismatches

    old = {k: v for k, v in fields().items() if k != "learner.credit"}  # credit did not exist: round 1 trained
    assert resume_mismatches(old, fields("learner.credit=first_round")) == []
    refused = resume_mismatches(old, fields("learner.credit=every_round"))
    assert [m.split(":")[0] for m in refused] == ["learner.credit"]
    assert "'first_round'" in refused[0] and "'every_round'" in refused[0]


def test_a_field_the_checkpoint_did_not_record_is_refused_when_its_old_value_is_unknown():
    from cluster.checkpoint import resume_mismatches

    old = {k: v for k, v in fields().items() if k != "rollout.seed"}
    assert [m.split(":")[0] for m in resume_mismatches(old, fields())] == ["rollout.seed"]
    # A section's sub-key that an old checkpoint lacks still compares equal while it is unset now.
    old = fields()
    old["model.warm_start"] = {k: v for k, v in old["model.warm_start"].items() if k != "operations"}
    assert resume_mismatches(old, fields()) == []


def test_a_refused_fresh_run_changes_nothing(tmp_path):
    from cluster.checkpoint import claim
    from cluster.config import BadInput

    checkpoints = saved_run(tmp_path / "checkpoints")
    before = contents(checkpoints.root)
    with pytest.raises(BadInput, match="holds another run's checkpoints"):
        claim(checkpoints, settings(), None, "hint")
    assert contents(checkpoints.root) == before  # the crash's step-00000002.partial included


def test_a_second_process_on_a_live_run_folder_is_refused_and_changes_nothing(tmp_path):
    from cluster.checkpoint import Checkpoints, claim
    from cluster.config import BadInput

    root = saved_run(tmp_path / "checkpoints").root
    (root / "step-00000002.partial").rmdir()
    live = subprocess.Popen([sys.executable, "-c", LIVE_RUN, str(root), SMOKE], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == "ready\n"
        before = contents(root)
        with pytest.raises(BadInput) as refused:
            claim(Checkpoints(root, keep=2), settings(), "auto", "hint")
        message = str(refused.value)
        assert "\n" not in message and str(root) in message and f"PID {live.pid}" in message
        assert "another motif process" in message and "nothing was changed" in message
        assert contents(root) == before and (root / "step-00000002.partial" / "learner" / "half-written").is_file()
    finally:
        live.stdin.close()
        assert live.wait(timeout=60) == 0
    # The live run is gone: its folder may be claimed, and what its crash left behind is cleaned up.
    folder, run_id = claim(Checkpoints(root, keep=2), settings(), "auto", "hint")
    assert (folder.name, run_id) == ("step-00000001", "first")
    assert not (root / "step-00000002.partial").exists()
