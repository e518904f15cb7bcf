"""Checkpoint folders: written whole or not at all, newest `keep` kept, found again by `--resume auto|PATH`.

A checkpoint is `<dir>/step-NNNNNNNN/` holding `adapter/` (PEFT files, loadable on their own), `learner/`
(DeepSpeed: adapter weights, optimizer and scheduler, every rank's shard and RNG) and `driver.json` (step,
adapter version and digest, data position, metrics offset, eval history) with `driver-rng.pkl`. It is written as
`step-N.partial`, fsynced, then renamed: a crash at any moment leaves either the complete folder or a partial
one that is ignored and cleaned up.

Every manifest names the run that wrote it (`run_id`) and the config fields that fix what it samples and in
what order (RESUME_FIELDS): a fresh run never writes into, prunes or resumes another run's checkpoints, and a
resume with other such settings is refused field by field. The learner ranks may shrink on resume from a ZeRO-0
checkpoint (LAYOUT_FIELDS). One process at a time holds a checkpoint folder (a lock file beside it).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cluster.config import BadInput, RunConfig, read_as_now, resume_field_names, without_new_unset
from learner.config import LAYOUT, RESUME
from rollout.common import replace_directory

STEP_FOLDER = re.compile(r"^step-(\d+)$")
MANIFEST = "driver.json"


def fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Config fields that change what a run samples or in what order; `steps` (and speed settings) may change.
RESUME_FIELDS = resume_field_names(RunConfig, RESUME)  # marked in the schema (cluster/config/schema.py)
# The value a run used before a resume field was recorded; a field a checkpoint lacks that is not here is refused,
# since what that run used is unknown.
BEFORE_RECORDED = {
    "learner.credit": "first_round",  # the only credit before learner.credit existed
    "rollout.protocol": None,  # rollout.rounds chose the protocol, as an unset rollout.protocol does
    "rollout.response_format": None,  # the protocol's own, as an unset rollout.response_format is
    # The protocols' own settings: no run before them used the protocols that read them.
    "rollout.max_attempts": 2,
    "rollout.max_rounds": 4,
    "rollout.carry": "progress",
    "rollout.carry_tokens": 32,
    # No run before dynamic sampling refilled a step.
    "rollout.dynamic_sampling": False,
    "rollout.dynamic_sampling_max_refills": 3,
}
# Recorded with them, checked by `layout_mismatches`: how the learner's DeepSpeed state lies on disk. At ZeRO 0
# the optimizer state is whole in rank 0's file and DeepSpeed loads it on any number of ranks (tested: a 2-rank
# checkpoint continues on 1 rank to float rounding), but each rank restores its own RNG file: fewer ranks, not
# more. At ZeRO 1-3 the optimizer state is partitioned per rank and DeepSpeed refuses another world size.
LAYOUT_FIELDS = resume_field_names(RunConfig, LAYOUT)
# Keys of a resume field's section that do not change the run: where the warm start is cached (its contents
# are keyed by the other settings).
NOT_COMPARED = {"model.warm_start": ("dir",)}


def resume_fields(config: dict) -> dict:
    """The RESUME_FIELDS and LAYOUT_FIELDS of a config (as a dict), by dotted name."""
    values = {}
    for name in RESUME_FIELDS + LAYOUT_FIELDS:
        node = config
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[name] = node
    return values


def _comparable(name: str, saved, current):
    """The two values of a resume field as compared: a section without its NOT_COMPARED keys, and without
    the keys a checkpoint written before they existed lacks while they are unset (None) now."""
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return saved, current
    ignored = NOT_COMPARED.get(name, ())
    return ({k: v for k, v in saved.items() if k not in ignored},
            {k: v for k, v in without_new_unset(saved, current).items() if k not in ignored})


def resume_mismatches(saved: dict, current: dict) -> list[str]:
    """'field: checkpoint X, now Y' for each resume field that differs; one the checkpoint did not record is
    compared as BEFORE_RECORDED, and refused when it is not there. The checkpoint's values are read as now."""
    saved = read_as_now(saved)
    mismatches = []
    for name in RESUME_FIELDS:
        if name not in saved and name not in BEFORE_RECORDED:
            mismatches.append(f"{name}: not recorded by the checkpoint, so what its run used is unknown")
            continue
        was, now = _comparable(name, saved.get(name, BEFORE_RECORDED.get(name)), current[name])
        if was != now:
            note = "" if name in saved else f" (written before {name} was recorded)"
            mismatches.append(f"{name}: checkpoint {was!r}{note}, now {now!r}")
    return mismatches + layout_mismatches(saved, current)


def layout_mismatches(saved: dict, current: dict) -> list[str]:
    """The learner ranks may shrink on resume only from a ZeRO-0 checkpoint into ZeRO 0 (see LAYOUT_FIELDS); the
    ZeRO stage may not change (DeepSpeed writes the optimizer state in another layout per stage)."""
    stage, stage_now = saved.get("learner.zero_stage"), current["learner.zero_stage"]
    if stage is not None and stage != stage_now:
        return [f"learner.zero_stage: checkpoint {stage!r}, now {stage_now!r} (DeepSpeed lays out the optimizer "
                "state differently per stage)"]
    ranks, now = saved.get("learner.num_ranks"), current["learner.num_ranks"]
    if ranks is None or ranks == now:
        return []
    if stage == 0:
        if now < ranks:
            return []
        why = "a ZeRO-0 checkpoint resumes on as many ranks or fewer: each rank restores its own RNG state"
    else:
        why = "ZeRO 1-3 partition the optimizer state per rank" if stage is not None else \
            "the checkpoint does not record its learner.zero_stage"
    return [f"learner.num_ranks: checkpoint {ranks!r}, now {now!r} ({why})"]


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


class Checkpoints:
    def __init__(self, root: str | Path, keep: int):
        self.root, self.keep = Path(root).resolve(), keep

    def complete(self, run_id: str | None = None) -> list[Path]:
        """Finished checkpoints (of run `run_id` when given), oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := STEP_FOLDER.match(p.name)) and (p / MANIFEST).is_file()]
        if run_id is not None:
            found = [(step, p) for step, p in found if read_manifest(p).get("run_id") == run_id]
        return [p for _, p in sorted(found)]

    def clean(self) -> None:
        """Remove what a crash mid-save left behind (a staging or retired folder); complete ones stay."""
        if self.root.is_dir():
            for leftover in [*self.root.glob("step-*.partial"), *self.root.glob("step-*.old")]:
                shutil.rmtree(leftover, ignore_errors=True)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, state: dict, write: Callable[[Path], None]) -> Path:
        """`write(folder)` fills the checkpoint; `state` becomes its manifest, written last, with the driver's
        Python and NumPy RNG states."""
        self.root.mkdir(parents=True, exist_ok=True)

        def write_whole(staging: Path) -> None:
            staging.mkdir()
            write(staging)
            with open(staging / "driver-rng.pkl", "wb") as f:
                pickle.dump({"python": random.getstate(), "numpy": np.random.get_state()}, f)
            (staging / MANIFEST).write_text(json.dumps(state, indent=1))
            fsync_tree(staging)

        # The same step saved again (a resumed run that stopped there) replaces the old folder.
        final = replace_directory(self.root / f"step-{step:08d}", write_whole)
        fsync_dir(self.root)
        for old in self.complete(state.get("run_id"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resolve(self, resume: str) -> Path | None:
        """`auto`: the newest complete checkpoint, None when there is none; else the folder named."""
        if resume == "auto":
            return self.latest()
        path = Path(resume).resolve()
        if not (path / MANIFEST).is_file():
            raise BadInput(f"--resume {resume}: not a complete checkpoint (no {MANIFEST}); complete ones "
                                    f"in {self.root}: {[p.name for p in self.complete()] or 'none'}")
        return path


def load_state(folder: Path) -> dict:
    """The manifest of a checkpoint; restores the driver's RNG states."""
    with open(folder / "driver-rng.pkl", "rb") as f:
        rng = pickle.load(f)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return read_manifest(folder)


# Lock file descriptors held until this process exits (the OS then releases them), by lock file.
_HELD: dict[Path, int] = {}


def hold(checkpoints: Checkpoints) -> None:
    """Take the checkpoint folder for this process, or refuse when another process holds it: that one may be
    writing a checkpoint this one would clean up, prune or resume. The lock file lies beside the folder, which
    holds checkpoints only."""
    lock = checkpoints.root.with_name(checkpoints.root.name + ".lock")
    if lock in _HELD:
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BadInput(f"checkpoint.dir {checkpoints.root}: cannot write {lock} ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (PID {holder})" if holder else ""  # the holder writes its PID just after locking
        raise BadInput(f"checkpoint.dir {checkpoints.root}: another motif process{pid} is using it (lock {lock}); "
                       "wait for it to end or choose another output_dir; nothing was changed") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[lock] = fd


def claim(checkpoints: Checkpoints, config: dict, resume: str | None, resume_hint: str) -> tuple[Path | None, str]:
    """The checkpoint to resume (None: a fresh run) and the run id to write under; the folder is this process's
    from then on (`hold`), and what a crash left in it is removed.

    A fresh run stops when the folder holds another run's checkpoints, rather than pruning or later resuming
    them by accident; a resume stops when a RESUME_FIELDS setting differs from the checkpoint's. Either stops
    before anything in the folder changes."""
    hold(checkpoints)
    folder = checkpoints.resolve(resume) if resume else None
    if folder is None:
        existing = checkpoints.complete()
        if existing and resume is None:
            raise BadInput(f"checkpoint.dir {checkpoints.root}: holds another run's checkpoints ("
                           f"{', '.join(p.name for p in existing)}); continue that run with --resume auto, or "
                           "choose another output_dir (or checkpoint.dir); nothing was changed")
        run_id = uuid.uuid4().hex[:12]
    else:
        manifest = read_manifest(folder)
        mismatches = resume_mismatches(manifest.get("config", {}), resume_fields(config))
        if mismatches:
            raise BadInput(f"--resume {folder}: the checkpoint was written with other settings "
                           f"({'; '.join(mismatches)}); resume with the run's own settings ({resume_hint}) or start "
                           "a new run in another output_dir")
        run_id = manifest.get("run_id") or uuid.uuid4().hex[:12]
    checkpoints.clean()
    return folder, run_id
