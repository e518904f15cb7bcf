"""Run untrusted work (grading model text, user reward functions) in worker processes that are killed if
they overrun.

A signal alarm only works on a process's main thread (not inside Ray actor threads or a driver's worker
threads), and a thread cannot be stopped, so the bound is a process: pebble kills a worker that exceeds its
time limit and starts a new one. Workers also get a memory limit, so a tower of exponents fails fast
instead of exhausting the machine.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from pebble import ProcessPool
from pebble.common import ProcessExpired

WORKER_MEMORY_BYTES = 2 << 30  # headroom above the forked worker's own mappings


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    failure: str | None = None  # None | "timeout" | "worker_died" | "error"
    message: str = ""


def _init_worker(memory_limit: int) -> None:
    import logging
    import resource

    # Relative to what the forked worker already maps: a Ray worker maps many GiB of shared memory.
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_limit, mapped + memory_limit))
    # math-verify warns on every call that its own alarm is off; the pool's timeout replaces it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


class BoundedPool:
    """A pool of forked worker processes; `map` runs one call per argument tuple, each bounded in time."""

    def __init__(self, workers: int | None = None, memory_bytes: int = WORKER_MEMORY_BYTES):
        # fork, not spawn: spawn re-imports the caller's __main__ (scripts would need a main guard) and
        # starts slowly. A forked worker that inherits a lock held by another thread hangs, and then the
        # same timeout that bounds the work kills and replaces it.
        self._pool = ProcessPool(
            max_workers=workers or os.cpu_count() or 1,
            initializer=_init_worker,
            initargs=(memory_bytes,),
            context=multiprocessing.get_context("fork"),
        )

    def map(self, fn: Callable, arg_tuples: Sequence[tuple], timeout_s: float) -> list[Outcome]:
        futures = [self._pool.schedule(fn, args=args, timeout=timeout_s) for args in arg_tuples]
        return [self._collect(f) for f in futures]

    @staticmethod
    def _collect(future) -> Outcome:
        try:
            return Outcome(future.result())
        except FutureTimeout:
            return Outcome(failure="timeout")
        except ProcessExpired as e:
            return Outcome(failure="worker_died", message=str(e))
        except Exception as e:  # noqa: BLE001 - one bad sample must not end a training run
            return Outcome(failure="error", message=f"{type(e).__name__}: {e}")

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()


Closable = TypeVar("Closable")


def process_wide(factory: Callable[[], Closable]) -> Callable[[], Closable]:
    """A getter for one lazily created instance per process, closed at exit (pools are costly to start)."""
    lock = threading.Lock()
    instance: list = []

    def get() -> Closable:
        with lock:
            if not instance:
                instance.append(factory())
                atexit.register(instance[0].close)
            return instance[0]

    return get
