"""Bounded, parallel grading: every answer is graded in a worker process that is killed if it overruns
(see rewards/bounded.py), and every non-answer is counted by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rewards.bounded import BoundedPool, process_wide
from rewards.math_answers import answers_match, extract_answer

DEFAULT_TIMEOUT_S = 5.0
MAX_RESPONSE_CHARS = 1_000_000


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    # "correct" | "wrong" | "no_answer" | "timeout" | "worker_died" | "error" | "invalid_input"
    reason: str
    answer: str | None = None  # the extracted final answer, when there was one


# Grading outcomes that say nothing about the answer: its score is left out, never counted as wrong.
UNGRADED = ("timeout", "worker_died", "error", "invalid_input")


def correctness(results: Sequence[GradeResult]) -> list[bool | None]:
    """Whether each graded answer is right; None where the grading said nothing (UNGRADED)."""
    return [None if r.reason in UNGRADED else r.correct for r in results]


def _grade_in_worker(response: str, gold: str) -> GradeResult:
    predicted = extract_answer(response)
    if predicted is None:
        return GradeResult(False, "no_answer")
    correct = answers_match(predicted, gold)
    return GradeResult(correct, "correct" if correct else "wrong", predicted)


class Grader:
    """A pool of grading processes. `grade_batch` fans a batch out across them, each answer time-bounded."""

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.reasons: Counter = Counter()
        import math_verify  # noqa: F401 - imported once here, inherited by every forked worker

        self._pool = BoundedPool(workers)

    def grade_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        valid = [
            i for i, (response, gold) in enumerate(zip(responses, golds))
            if isinstance(response, str) and isinstance(gold, str) and len(response) <= MAX_RESPONSE_CHARS
        ]
        outcomes = self._pool.map(_grade_in_worker, [(responses[i], golds[i]) for i in valid], self.timeout_s)
        results = [GradeResult(False, "invalid_input")] * len(responses)
        for i, outcome in zip(valid, outcomes):
            results[i] = outcome.value if outcome.failure is None else GradeResult(False, outcome.failure)
        self.reasons.update(r.reason for r in results)
        return results

    def close(self) -> None:
        self._pool.close()


default_grader = process_wide(Grader)


def grade(response: str, gold: str) -> bool:
    """True when the final answer extracted from `response` equals the gold final answer.

    Bounded in time (DEFAULT_TIMEOUT_S) on any thread and inside Ray actors; hostile input returns False.
    """
    return default_grader().grade_batch([response], [gold])[0].correct


def grade_batch(responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
    """Grade many responses in parallel worker processes; see `Grader.grade_batch`."""
    return default_grader().grade_batch(responses, golds)
