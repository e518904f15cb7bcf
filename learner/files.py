"""Folders written whole or not at all: the adapter and model exports, checkpoints and the models built here all
go through `replace_directory`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def write_files(target: Path, files: dict[str, bytes]) -> Path:
    """A flat folder of `files`, swapped in atomically for `target`."""

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)

    return replace_directory(target, write)


def replace_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder through `write(staging_path)`, then swap it in for `target`: a reader never sees a half
    folder, and an old `target` is only deleted once the new one is in place."""
    staging = target.with_name(target.name + ".partial")
    retired = target.with_name(target.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    write(staging)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target
