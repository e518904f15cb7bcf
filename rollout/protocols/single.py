"""Single-round GRPO: one turn per sample, reasoning then a boxed answer. Its prompt is MOTIF's with one round
("round 1 of 1", give the final answer), so a single-round run is the R = 1 baseline every MOTIF claim is
measured against, prompt for prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rollout.protocols import Generate, Protocol, register_protocol
from rollout.protocols.motif import MotifSpec, motif_response_format, motif_rollout
from rollout.records import Episode


def single_rollout(generate: Generate, questions: Sequence[str], spec: MotifSpec) -> list[Episode]:
    """B questions -> B*m one-turn episodes."""
    return motif_rollout(generate, questions, dataclasses.replace(spec, rounds=1))


def _check(settings) -> None:
    if settings.rounds != 1:
        raise ValueError(f"rollout.protocol=single has one round: rollout.rounds must be 1, got {settings.rounds}")


# every_round on one-turn episodes trains the root alone, as first_round does: the default credit serves both.
register_protocol("single", Protocol(rollout=single_rollout, check=_check,
                                     credits=("first_round", "every_round", "best_worst"),
                                     response_format=lambda settings: motif_response_format(1)))
