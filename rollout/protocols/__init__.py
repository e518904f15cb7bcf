"""Protocols by name (`rollout.protocol`): how an episode's turns are built and sent to the pool's `generate`,
when it stops, the response format its turns follow (rollout.protocols.formats) and its system prompts, its
config checks, and the counts it keeps in Episode.stats (logged per step as rollout/<key>). The pool knows
none of them: a protocol receives `generate`.

A protocol is one module here that registers a `Protocol`. Built in: `motif` (rounds carried by progress
notes), `single` (one round; `rollout.rounds=1` says the same), `self_correct` (attempts judged by the model
itself, corrected after a "wrong" verdict) and `markovian` (MOTIF whose rounds stop when one answers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rollout.common import registrar
from rollout.records import Completion, Episode, SamplingSpec, Turn

Generate = Callable[[list[list[dict[str, str]]], SamplingSpec, bool], list[list[Completion]]]


def _same_spec(common, rollout_settings, tokenizer=None):
    return common


def _chain_ends(episode: Episode) -> list[Turn]:
    """MOTIF's final answers: the last turn of each chain (the root's own when it has none)."""
    chains = episode.chains()
    return [chain[-1] for chain in chains] if chains else [episode.root]


def _root(episode: Episode) -> Turn:
    return episode.root


@dataclass(frozen=True)
class Protocol:
    rollout: Callable[[Generate, Sequence[str], object], list[Episode]]  # (generate, questions, spec)
    # The rollout settings it accepts: check(rollout settings) raises ValueError naming the keys.
    check: Callable[[object], None]
    credits: tuple[str, ...]  # the learner.credit entries that know its episodes
    # The FORMATS entry its response should follow, from the rollout settings (or a spec: both hold `rounds`).
    response_format: Callable[[object], str]
    # Its spec from the common one (cluster.spec: m, sampling, system prompts), the rollout settings and the
    # model's tokenizer (a path, None where no model is at hand, e.g. in preflight checks).
    spec: Callable[..., object] = _same_spec
    # What the rewards see of an episode: the turn whose text is the trained response (the format reward
    # checks it), and the turns that hold its final answers (graded; one per chain).
    response: Callable[[Episode], Turn] = _root
    finals: Callable[[Episode], list[Turn]] = _chain_ends
    # Its system prompt from the rollout settings (None: MOTIF's); the motivation (MeRF) is appended to it.
    system_prompt: Callable[[object], str] | None = None
    # The FORMATS entry of the turns that give the final answer (MOTIF's last round), from the settings or a spec.
    final_format: Callable[[object], str] = lambda settings: "reasoning_answer"
    # Its own figures per graded episode: outcomes(episode, correct) where correct[j] says whether turn j
    # answered right (None: not graded), for the turns `graded` names; None: no figures of its own.
    graded: Callable[[Episode], list[int]] = lambda episode: []
    outcomes: Callable[[Episode, dict[int, bool | None]], dict[str, float | None]] | None = None


def conversation(user_message: str, system_prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_message}]


PROTOCOLS: dict[str, Protocol] = {}
_register = registrar(PROTOCOLS)


def register_protocol(name: str, protocol: Protocol) -> Protocol:
    return _register(name)(protocol)


def protocol_name(protocol: str | None, rounds: int) -> str:
    """`rollout.protocol`, or when unset the one `rollout.rounds` implies (1: single, more: motif)."""
    return protocol or ("single" if rounds == 1 else "motif")


from rollout.protocols import markovian, motif, self_correct, single  # noqa: E402,F401  (each module registers its protocol)
