"""Records the learner accepts from the driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSample:
    """One completion to train on, with its group-normalised advantage."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    temperature: float | None = None  # what it was sampled at (None: the learner's, round 1's)


@dataclass(frozen=True)
class SFTSample:
    """A prompt and the response to imitate; the loss covers the response tokens only."""

    prompt_ids: list[int]
    completion_ids: list[int]
