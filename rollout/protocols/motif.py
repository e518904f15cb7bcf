"""MOTIF, one batched `generate` per round: round 1 produces m samples per question (reasoning, then a short
progress note). Each round-1 sample is continued k times through rounds 2..R; round r sees only the question
and round r-1's progress, and the last round must end with a boxed final answer. Each round-1 sample is an
Episode: its root, and below it k chains of R-1 turns. With R == 1 this is single-round GRPO (`single`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rollout.engine import ABORTED
from rollout.protocols import Generate, Protocol, conversation, register_protocol
from rollout.protocols.formats import extract_progress
from rollout.records import Episode, SamplingSpec, Turn


SYSTEM_PROMPT = "You are a careful assistant that solves math problems over several rounds of reasoning."
INTERMEDIATE_FORMAT = (
    "Think inside <reasoning> </reasoning>, then write a short summary of what you have established so far "
    "inside <progress> </progress>. Only the progress is carried into the next round."
)
FINAL_FORMAT = (
    "Think inside <reasoning> </reasoning>, then give the final answer inside <answer> </answer> "
    "as \\boxed{...}."
)
# Carried when a round wrote no <progress> block: its raw text would leak reasoning into the next round and
# reward dropping the tag.
MISSING_PROGRESS = "(the previous round recorded no progress)"


def round_instruction(round_index: int, rounds: int) -> str:
    fmt = FINAL_FORMAT if round_index == rounds else INTERMEDIATE_FORMAT
    return f"This is round {round_index} of {rounds}. {fmt}"


def first_round_message(question: str, rounds: int) -> str:
    return f"Question: {question}\n\n{round_instruction(1, rounds)}"


def continuation_message(question: str, progress: str, round_index: int, rounds: int) -> str:
    return (
        f"Question: {question}\n\nProgress so far (from round {round_index - 1}):\n{progress}\n\n"
        f"{round_instruction(round_index, rounds)}"
    )


def carried_progress(text: str) -> str | None:
    """What a round passes on: its <progress> block, or None when it wrote none."""
    return extract_progress(text)


def motif_response_format(rounds: int) -> str:
    """The FORMATS entry (rollout.protocols.formats) a round-1 response should follow."""
    return "reasoning_answer" if rounds == 1 else "reasoning_progress"


@dataclass(frozen=True)
class MotifSpec:
    samples_per_prompt: int = 4  # m
    continuations: int = 2  # k
    rounds: int = 2  # R
    first_round: SamplingSpec = SamplingSpec(temperature=1.0, max_tokens=128)
    continuation: SamplingSpec = SamplingSpec(temperature=0.8, max_tokens=128)
    continuation_policy: str = "current"  # "current" adapter or "frozen_base" model for rounds 2..R
    system_prompt: str = SYSTEM_PROMPT  # rounds before the last
    final_system_prompt: str | None = None  # the last round (None: the same); motivation text differs by round

    def system_prompt_for(self, round_index: int) -> str:
        if round_index == self.rounds and self.final_system_prompt is not None:
            return self.final_system_prompt
        return self.system_prompt

    @property
    def response_format(self) -> str:
        return motif_response_format(self.rounds)

    def __post_init__(self):
        if min(self.samples_per_prompt, self.continuations, self.rounds) < 1:
            raise ValueError(f"m, k and R must be >= 1, got {self.samples_per_prompt}, {self.continuations}, {self.rounds}")
        if self.continuation_policy not in ("current", "frozen_base"):
            raise ValueError(f"continuation_policy must be 'current' or 'frozen_base', got {self.continuation_policy!r}")


def motif_rollout(generate: Generate, questions: Sequence[str], spec: MotifSpec) -> list[Episode]:
    """B questions -> B*m episodes, each a round-1 root with k chains of R-1 continuation rounds."""
    m, k, rounds = spec.samples_per_prompt, spec.continuations, spec.rounds
    first_spec = SamplingSpec(**{**spec.first_round.__dict__, "n": m})
    messages = [first_round_message(q, rounds) for q in questions]
    first = generate([conversation(msg, spec.system_prompt_for(1)) for msg in messages], first_spec, True)
    episodes = [
        Episode(b, [Turn(sample, messages[b], 1, None, first_spec.temperature)], {"missing_progress": 0})
        for b in range(len(questions)) for sample in first[b]
    ]
    if rounds == 1:
        return episodes

    use_adapter = spec.continuation_policy == "current"
    # Live chains: (episode, the previous round's turn index). A round that failed to generate (aborted) ends
    # its chain there: it carries nothing, and its episode is dropped from training and counted as failed.
    live = [(e, 0) for e in episodes]
    for round_index in range(2, rounds + 1):
        live = [(e, i) for e, i in live if e.turns[i].completion.finish_reason != ABORTED]
        if not live:
            break
        messages = []
        for e, i in live:
            progress = carried_progress(e.turns[i].completion.text)
            e.stats["missing_progress"] += progress is None
            messages.append(continuation_message(
                questions[e.prompt_index], MISSING_PROGRESS if progress is None else progress, round_index, rounds))
        round_spec = SamplingSpec(**{**spec.continuation.__dict__, "n": k if round_index == 2 else 1})
        outputs = generate([conversation(msg, spec.system_prompt_for(round_index)) for msg in messages],
                           round_spec, use_adapter)
        live = [(e, e.add(Turn(sample, msg, round_index, parent, round_spec.temperature)))
                for (e, parent), msg, samples in zip(live, messages, outputs) for sample in samples]
    return episodes


def _check(settings) -> None:
    if settings.rounds < 2:
        raise ValueError(f"rollout.protocol=motif needs rollout.rounds >= 2, got {settings.rounds} (one round is "
                         "rollout.protocol=single)")


register_protocol("motif", Protocol(rollout=motif_rollout, check=_check,
                                    credits=("first_round", "every_round", "best_worst"),
                                    response_format=lambda settings: motif_response_format(settings.rounds)))
