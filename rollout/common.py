"""The helpers every role shares (rollout, rewards, learner, cluster), each defined once here, beside the
records: the registrar every registry files its entries with; shard balancing and seeds; why an actor failed,
in one line; folders written whole or not at all (staging, then rename)."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path


# --- registries ---
def registrar(table: dict):
    """A decorator factory that files a function in `table` under a name: `@registrar(TABLE)("name")`."""
    def register(name: str):
        def wrap(fn):
            if name in table:
                raise ValueError(f"{name!r} is registered twice")
            table[name] = fn
            return fn

        return wrap

    return register


# --- shards and their seeds ---
def balance(costs: Sequence[float], bins: int) -> list[list[int]]:
    """Split item indices into `bins` shards of near-equal total cost (largest first onto the lightest shard);
    each shard keeps its indices in their original order."""
    shards: list[list[int]] = [[] for _ in range(bins)]
    loads = [0.0] * bins
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        lightest = min(range(bins), key=lambda b: (loads[b], b))
        shards[lightest].append(i)
        loads[lightest] += costs[i]
    return [sorted(s) for s in shards]


def shard_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


# --- failures ---
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\w*: ")


class WorkerStartFailed(RuntimeError):
    """A worker died while starting: its own error, not a fault to recover from."""


def failure_cause(error: Exception) -> str:
    """The useful line of why an actor or one of its calls failed: the last exception line of its traceback
    (with the reason that pydantic puts on the line after it)."""
    lines = str(getattr(error, "error_msg", None) or error).splitlines()
    found = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    if not found:
        return lines[-1].strip() if lines else type(error).__name__
    i = found[-1]
    cause = lines[i].strip()
    if re.search(r"validation errors? for", cause) and i + 1 < len(lines):
        cause += ": " + lines[i + 1].strip()
    return cause if len(cause) <= 500 else cause[:497] + "..."


# --- folders written whole ---
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
