"""Protocols by name (`rollout.protocol`): how an episode's turns are built and sent to the pool's `generate`,
when it stops, the response format its turns follow (rollout.protocols.formats) and its system prompts, its
config checks, and the counts it keeps in Episode.stats (logged per step as rollout/<key>). The pool knows
none of them: a protocol receives `generate`.

A protocol is one module here that registers a `Protocol`. Built in: `motif` (rounds carried by progress
notes) and `single` (one round; `rollout.rounds=1` says the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rollout.common import registrar
from rollout.records import Completion, Episode, SamplingSpec

Generate = Callable[[list[list[dict[str, str]]], SamplingSpec, bool], list[list[Completion]]]


@dataclass(frozen=True)
class Protocol:
    rollout: Callable[[Generate, Sequence[str], object], list[Episode]]  # (generate, questions, spec)
    # The rollout settings it accepts: check(rounds, continuations) raises ValueError naming the keys.
    check: Callable[[int, int], None]
    credits: tuple[str, ...]  # the learner.credit entries that know its episodes


def conversation(user_message: str, system_prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_message}]


PROTOCOLS: dict[str, Protocol] = {}
_register = registrar(PROTOCOLS)


def register_protocol(name: str, protocol: Protocol) -> Protocol:
    return _register(name)(protocol)


def protocol_name(protocol: str | None, rounds: int) -> str:
    """`rollout.protocol`, or when unset the one `rollout.rounds` implies (1: single, more: motif)."""
    return protocol or ("single" if rounds == 1 else "motif")


from rollout.protocols import motif, single  # noqa: E402,F401  (each module registers its protocol)
