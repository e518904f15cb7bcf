"""Bounded, parallel grading: every answer is graded in a worker process that is killed if it overruns.

A signal alarm only works on a process's main thread (not inside Ray actor threads or a driver's worker
threads), and a thread cannot be stopped, so the bound is a process: pebble kills a worker that exceeds its
time limit and starts a new one. Workers also get a memory limit, so a tower of exponents fails fast
instead of exhausting the machine. Every non-answer is counted by reason.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessPool
from pebble.common import ProcessExpired

from rewards.math_answers import answers_match, extract_answer

DEFAULT_TIMEOUT_S = 5.0
WORKER_MEMORY_BYTES = 2 << 30  # headroom above the forked worker's own mappings
MAX_RESPONSE_CHARS = 1_000_000


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    # "correct" | "wrong" | "no_answer" | "timeout" | "worker_died" | "error" | "invalid_input"
    reason: str


def _init_worker(memory_limit: int) -> None:
    import logging
    import resource

    # Relative to what the forked worker already maps: a Ray worker maps many GiB of shared memory.
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_limit, mapped + memory_limit))
    # math-verify warns on every call that its own alarm is off; the pool's timeout replaces it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _grade_in_worker(response: str, gold: str) -> GradeResult:
    predicted = extract_answer(response)
    if predicted is None:
        return GradeResult(False, "no_answer")
    return GradeResult(True, "correct") if answers_match(predicted, gold) else GradeResult(False, "wrong")


class Grader:
    """A pool of grading processes. `grade_batch` fans a batch out across them, each answer time-bounded."""

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.reasons: Counter = Counter()
        # fork, not spawn: spawn re-imports the caller's __main__ (scripts would need a main guard) and
        # starts slowly. A forked worker that inherits a lock held by another thread hangs, and then the
        # same timeout that bounds grading kills and replaces it.
        import math_verify  # noqa: F401 - imported once here, inherited by every forked worker

        self._pool = ProcessPool(
            max_workers=workers or os.cpu_count() or 1,
            initializer=_init_worker,
            initargs=(WORKER_MEMORY_BYTES,),
            context=multiprocessing.get_context("fork"),
        )

    def grade_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        futures = []
        for response, gold in zip(responses, golds):
            if not isinstance(response, str) or not isinstance(gold, str) or len(response) > MAX_RESPONSE_CHARS:
                futures.append(GradeResult(False, "invalid_input"))
            else:
                futures.append(self._pool.schedule(_grade_in_worker, args=(response, gold), timeout=self.timeout_s))
        results = [f if isinstance(f, GradeResult) else self._collect(f) for f in futures]
        self.reasons.update(r.reason for r in results)
        return results

    def _collect(self, future) -> GradeResult:
        try:
            return future.result()
        except FutureTimeout:
            return GradeResult(False, "timeout")
        except ProcessExpired:
            return GradeResult(False, "worker_died")
        except Exception:  # noqa: BLE001 - a grader bug on one answer must not end a training run
            return GradeResult(False, "error")

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()


_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
            atexit.register(_default.close)
        return _default


def grade(response: str, gold: str) -> bool:
    """True when the final answer extracted from `response` equals the gold final answer.

    Bounded in time (DEFAULT_TIMEOUT_S) on any thread and inside Ray actors; hostile input returns False.
    """
    return default_grader().grade_batch([response], [gold])[0].correct


def grade_batch(responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
    """Grade many responses in parallel worker processes; see `Grader.grade_batch`."""
    return default_grader().grade_batch(responses, golds)
