"""MOTIF's outcome reward for a round-1 response: how often its continuations end correct."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rewards.grading import correctness, grade_batch


def mean_per_group(flat_values: Sequence[float], groups: Sequence[Sequence]) -> list[float]:
    """Means of `flat_values` taken in consecutive runs of len(group) for each group (the k finals of a sample)."""
    means, i = [], 0
    for group in groups:
        means.append(sum(flat_values[i : i + len(group)]) / len(group))
        i += len(group)
    return means


def _grade_finals(finals: Sequence[Sequence[str]], golds: Sequence[str]):
    """Every final-round response graded against its sample's gold, in one batch, in order."""
    if any(len(f) == 0 for f in finals):
        raise ValueError("every round-1 sample needs at least one final response")
    flat = [(text, gold) for texts, gold in zip(finals, golds) for text in texts]
    return grade_batch([t for t, _ in flat], [g for _, g in flat])


def future_accuracies(finals: Sequence[Sequence[str]], golds: Sequence[str]
                      ) -> tuple[list[float], Counter, list[list[float | None]]]:
    """Per round-1 sample, the mean correctness of its k final-round responses (graded once, in one batch) over
    those whose grading finished; the count of grading outcomes by reason (and of samples with no graded final);
    and each final's correctness (None where its grading failed), which credit reads instead of grading again."""
    results = _grade_finals(finals, golds)
    flat = iter(None if c is None else float(c) for c in correctness(results))
    per_final = [[next(flat) for _ in texts] for texts in finals]
    counts = Counter(r.reason for r in results)
    means = []
    for scores in per_final:
        graded = [s for s in scores if s is not None]
        means.append(sum(graded) / len(graded) if graded else 0.0)
        if not graded:
            counts["ungraded_samples"] += 1
    return means, counts, per_final


def future_accuracy(final_responses: Sequence[str], gold: str) -> float:
    """Mean correctness of the final-round responses of the k continuations of one round-1 sample."""
    return future_accuracies([final_responses], [gold])[0][0]
