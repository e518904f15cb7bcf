"""The per-user cache of models built here (the tiny model, the toy task's warm start): one place whatever the
working directory, one builder at a time."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """The per-user cache of built models: $MOTIF_CACHE, else $XDG_CACHE_HOME/motif-rl, else ~/.cache/motif-rl.
    Not the working directory: runs from any folder (and every `ray job submit` copy of the project) share it."""
    if os.environ.get("MOTIF_CACHE"):
        return Path(os.environ["MOTIF_CACHE"]).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "motif-rl").resolve()


def tiny_model_digest() -> str:
    """The tiny model's builder code: a cache shared by every version of the project must not serve a model
    built by other code."""
    import learner.tiny_model

    return hashlib.sha256(Path(learner.tiny_model.__file__).read_bytes()).hexdigest()[:12]


@contextlib.contextmanager
def build_lock(folder: Path):
    """One builder at a time per cached folder (runs started together share the user's cache); the others wait
    and then find it built."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
