"""Adaptive rounds: MOTIF whose rounds may stop early. Any round may give the final answer, and that ends its
chain; a round that does not answer hands a carry-over to the next: its progress note (MOTIF's, `carry:
progress`) or the last `rollout.carry_tokens` tokens of its text verbatim (`carry: tokens`, after Delethink,
arXiv 2510.06557). Round `max_rounds` must answer.

An episode is MOTIF's tree: m round-1 samples per question; a root that did not answer is continued k times,
and each chain runs on (one sample per round) until it answers or reaches max_rounds. A root that answered has
no chains: it is its own final answer. Evaluation may allow more rounds than training (`eval.max_rounds`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rollout.engine import ABORTED
from rollout.protocols import Generate, Protocol, conversation, register_protocol
from rollout.protocols.formats import extract_progress, last_block
from rollout.protocols.motif import FINAL_FORMAT, MISSING_PROGRESS, MotifSpec
from rollout.records import Episode, Turn

CARRIES = ("progress", "tokens")
RESPONSE_FORMAT = "reasoning_progress_or_answer"
OPEN_FORMAT = ("Think inside <reasoning> </reasoning>. If you have the final answer, give it inside <answer> "
               "</answer> as \\boxed{...}; otherwise write what you have established so far inside <progress> "
               "</progress>, and you will go on from it in the next round.")


def round_message(question: str, round_index: int, max_rounds: int, carried: str | None) -> str:
    fmt = FINAL_FORMAT if round_index == max_rounds else OPEN_FORMAT
    before = f"\n\nCarried over from round {round_index - 1}:\n{carried}" if carried is not None else ""
    return f"Question: {question}{before}\n\nThis is round {round_index} of at most {max_rounds}. {fmt}"


def answered(text: str) -> bool:
    return last_block(text, "answer") is not None


@dataclass(frozen=True)
class MarkovianSpec(MotifSpec):
    """MOTIF's settings; `rounds` is unused: `max_rounds` bounds every chain."""

    max_rounds: int = 4
    carry: str = "progress"
    carry_tokens: int = 32
    # Token ids -> text, for `carry: tokens` (the model's tokenizer; bound where the model is known).
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_rounds < 1 or self.carry not in CARRIES or self.carry_tokens < 1:
            raise ValueError(f"max_rounds >= 1, carry in {CARRIES} and carry_tokens >= 1, got {self.max_rounds}, "
                             f"{self.carry!r}, {self.carry_tokens}")

    def carried(self, turn: Turn) -> tuple[str, bool]:
        """What a round that did not answer hands on, and whether it wrote no progress note (progress mode)."""
        if self.carry == "tokens":
            if self.decode is None:
                raise RuntimeError("carry: tokens needs the model's tokenizer (MarkovianSpec.decode)")
            return self.decode(turn.completion.completion_ids[-self.carry_tokens :]), False
        progress = extract_progress(turn.completion.text)
        return (MISSING_PROGRESS, True) if progress is None else (progress, False)


def markovian_rollout(generate: Generate, questions: Sequence[str], spec: MarkovianSpec) -> list[Episode]:
    """B questions -> B*m episodes, one batched `generate` per round across every chain still open."""
    m, k = spec.samples_per_prompt, spec.continuations
    first_spec = dataclasses.replace(spec.first_round, n=m)
    messages = [round_message(q, 1, spec.max_rounds, None) for q in questions]
    first = generate([conversation(msg, spec.system_prompt) for msg in messages], first_spec, True)
    episodes = [Episode(b, [Turn(c, messages[b], 1, None, first_spec.temperature)], {"missing_progress": 0})
                for b in range(len(questions)) for c in first[b]]
    use_adapter = spec.continuation_policy == "current"
    live = [(e, 0) for e in episodes]
    for round_index in range(2, spec.max_rounds + 1):
        live = [(e, i) for e, i in live if e.turns[i].completion.finish_reason != ABORTED
                and not answered(e.turns[i].completion.text)]
        if not live:
            break
        messages = []
        for e, i in live:
            carried, missing = spec.carried(e.turns[i])
            e.stats["missing_progress"] += missing
            messages.append(round_message(questions[e.prompt_index], round_index, spec.max_rounds, carried))
        round_spec = dataclasses.replace(spec.continuation, n=k if round_index == 2 else 1)
        outputs = generate([conversation(msg, spec.system_prompt) for msg in messages], round_spec, use_adapter)
        live = [(e, e.add(Turn(sample, msg, round_index, parent, round_spec.temperature)))
                for (e, parent), msg, samples in zip(live, messages, outputs) for sample in samples]
    return episodes


def outcomes(episode: Episode, correct: dict[int, bool | None]) -> dict[str, float | None]:
    """Rounds used (per chain, averaged over the episode's chains) and the share of its chains that answered in
    a round that could have handed on (before the last allowed one)."""
    chains = [[episode.root, *chain] for chain in episode.chains()] or [[episode.root]]
    early = [OPEN_FORMAT in chain[-1].message and answered(chain[-1].completion.text) for chain in chains]
    return {"rounds": sum(map(len, chains)) / len(chains), "answered_early": sum(early) / len(chains)}


def _check(settings) -> None:
    if settings.max_rounds < 1:
        raise ValueError(f"rollout.max_rounds must be >= 1, got {settings.max_rounds}")
    if settings.carry not in CARRIES:
        raise ValueError(f"rollout.carry must be one of {', '.join(CARRIES)}, got {settings.carry!r}")
    if settings.carry_tokens < 1:
        raise ValueError(f"rollout.carry_tokens must be >= 1, got {settings.carry_tokens}")


def _spec(common: MotifSpec, settings, tokenizer: str | None = None) -> MarkovianSpec:
    fields = {f.name: getattr(common, f.name) for f in dataclasses.fields(MotifSpec)}
    decode = None
    if tokenizer is not None and settings.carry == "tokens":
        from transformers import AutoTokenizer

        decode = AutoTokenizer.from_pretrained(tokenizer).decode
    return MarkovianSpec(**fields, max_rounds=settings.max_rounds, carry=settings.carry,
                         carry_tokens=settings.carry_tokens, decode=decode)


# The root's format: it either answers or hands on progress (tokens carry: any reasoning, graded the same way).
register_protocol("markovian", Protocol(
    rollout=markovian_rollout, check=_check, credits=("first_round", "every_round", "every_turn"),
    response_format=lambda settings: RESPONSE_FORMAT, spec=_spec, outcomes=outcomes,
))
