"""Checkpoint folders: written whole or not at all, newest `keep` kept, found again by `--resume auto|PATH`.

A checkpoint is `<dir>/step-NNNNNNNN/` holding `adapter/` (PEFT files, loadable on their own), `learner/`
(DeepSpeed: adapter weights, optimizer and scheduler, every rank's shard and RNG) and `driver.json` (step,
adapter version and digest, data position, metrics offset, eval history) with `driver-rng.pkl`. It is written as
`step-N.partial`, fsynced, then renamed: a crash at any moment leaves either the complete folder or a partial
one that is ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


class Checkpoints:
    def __init__(self, root: str | Path, keep: int):
        self.root, self.keep = Path(root).resolve(), keep

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := STEP_FOLDER.match(p.name)) and (p / MANIFEST).is_file()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, state: dict, write: Callable[[Path], None]) -> Path:
        """`write(folder)` fills the checkpoint; `state` becomes its manifest, written last, with the driver's
        Python and NumPy RNG states."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:08d}"
        staging = final.with_name(final.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write(staging)
        with open(staging / "driver-rng.pkl", "wb") as f:
            pickle.dump({"python": random.getstate(), "numpy": np.random.get_state()}, f)
        (staging / MANIFEST).write_text(json.dumps(state, indent=1))
        fsync_tree(staging)
        if final.exists():  # the same step saved again (a resumed run that stopped there): replace it
            retired = final.with_name(final.name + ".old")
            shutil.rmtree(retired, ignore_errors=True)
            final.rename(retired)
            shutil.rmtree(retired)
        staging.rename(final)
        fsync_dir(self.root)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in self.root.glob("step-*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)

    def resolve(self, resume: str) -> Path | None:
        """`auto`: the newest complete checkpoint, None when there is none; else the folder named."""
        if resume == "auto":
            return self.latest()
        path = Path(resume).resolve()
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no {MANIFEST}); complete ones "
                                    f"in {self.root}: {[p.name for p in self.complete()] or 'none'}")
        return path


def load_state(folder: Path) -> dict:
    """The manifest of a checkpoint; restores the driver's RNG states."""
    with open(folder / "driver-rng.pkl", "rb") as f:
        rng = pickle.load(f)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return json.loads((folder / MANIFEST).read_text())
