"""MOTIF's outcome reward for a round-1 response: how often its continuations end correct."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.math_answers import grade


def future_accuracy(final_responses: Sequence[str], gold: str) -> float:
    """Mean correctness of the final-round responses of the k continuations of one round-1 sample."""
    if not final_responses:
        raise ValueError("future_accuracy needs at least one continuation")
    return sum(grade(r, gold) for r in final_responses) / len(final_responses)
