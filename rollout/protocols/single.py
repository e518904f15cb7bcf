"""Single-round GRPO: one turn per sample. By default it reasons then gives a boxed answer, with MOTIF's prompt
for one round ("round 1 of 1", give the final answer), so a single-round run is the R = 1 baseline every MOTIF
claim is measured against, prompt for prompt.

`rollout.response_format` asks for another shape instead: `think_response` (RLMT, arXiv 2509.20357: think in
<think> tags, then respond; a reward model reads the response alone) or `response` (RLMT's baseline: respond
without thinking). Those send the question as it is, and say the shape in the system prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from rollout.protocols import Generate, Protocol, conversation, register_protocol
from rollout.protocols.motif import SYSTEM_PROMPT, MotifSpec, motif_response_format, motif_rollout
from rollout.records import Episode, Turn

DEFAULT_FORMAT = motif_response_format(1)
# The system prompt of each format a single round may be asked for; the default's is MOTIF's.
SYSTEM_PROMPTS = {
    DEFAULT_FORMAT: SYSTEM_PROMPT,
    "think_response": "You are a helpful assistant. First think the request through inside <think> </think>. "
                      "Then, after </think>, write your response. Only the response is shown and judged.",
    "response": "You are a helpful assistant. Write your response directly, without showing your thinking.",
}


@dataclass(frozen=True)
class SingleSpec(MotifSpec):
    """MOTIF's settings with one round, and the FORMATS entry the response is asked for."""

    asked_format: str = DEFAULT_FORMAT

    @property
    def response_format(self) -> str:
        return self.asked_format


def response_format(settings) -> str:
    """The format a SingleSpec asks for, or the rollout settings' (rollout.response_format; unset: the default);
    a plain MotifSpec asks for the default."""
    if isinstance(settings, SingleSpec):
        return settings.asked_format
    return DEFAULT_FORMAT if isinstance(settings, MotifSpec) else settings.response_format or DEFAULT_FORMAT


def single_rollout(generate: Generate, questions: Sequence[str], spec: MotifSpec) -> list[Episode]:
    """B questions -> B*m one-turn episodes."""
    if response_format(spec) == DEFAULT_FORMAT:
        return motif_rollout(generate, questions, dataclasses.replace(spec, rounds=1))
    sampling = dataclasses.replace(spec.first_round, n=spec.samples_per_prompt)
    outputs = generate([conversation(q, spec.system_prompt_for(1)) for q in questions], sampling, True)
    return [Episode(b, [Turn(sample, questions[b], 1, None, sampling.temperature)], {})
            for b in range(len(questions)) for sample in outputs[b]]


def _check(settings) -> None:
    if settings.rounds != 1:
        raise ValueError(f"rollout.protocol=single has one round: rollout.rounds must be 1, got {settings.rounds}")
    if response_format(settings) not in SYSTEM_PROMPTS:
        raise ValueError(f"rollout.response_format must be one of {', '.join(SYSTEM_PROMPTS)} for "
                         f"rollout.protocol=single, got {settings.response_format!r}")


def _spec(common: MotifSpec, settings, tokenizer: str | None = None) -> SingleSpec:
    fields = {f.name: getattr(common, f.name) for f in dataclasses.fields(MotifSpec)}
    return SingleSpec(**fields, asked_format=response_format(settings))


# every_round on one-turn episodes trains the root alone, as first_round does: the default credit serves both.
register_protocol("single", Protocol(
    rollout=single_rollout, check=_check, credits=("first_round", "every_round", "best_worst"),
    response_format=response_format, final_format=response_format, spec=_spec,
    system_prompt=lambda settings: SYSTEM_PROMPTS[response_format(settings)],
))
