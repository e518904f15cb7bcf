"""Self-rewarding correction (arXiv 2502.19613): the model answers, then judges its own answer; after a "wrong"
verdict it corrects the answer and judges again, until a "correct" verdict or `rollout.max_attempts` attempts.

One episode per sample, a single line of turns, all in one conversation:

    user: Question ... (answer format)      model: attempt 1          (kind response, index 1)
    user: VERIFY_INSTRUCTION                model: [VERIFY] wrong     (kind verdict, index 1)
    user: CORRECT_INSTRUCTION               model: attempt 2          (kind response, index 2)
    user: VERIFY_INSTRUCTION                model: [VERIFY] correct   (kind verdict, index 2)

The instructions are the protocol's text: each is the `message` of the model turn that answers it, so it is
prompt, never trained. Only an explicit "wrong" leads to a correction; a verdict in neither form ends the
episode and is counted (`rollout/unparsed_verdicts`). The reward scores the final attempt alone: a bonus for
the verdict or for changing a wrong answer into a right one was exploited in the paper (turn-1 accuracy fell
while final accuracy rose), so none is built in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rollout.engine import ABORTED
from rollout.protocols import Generate, Protocol, register_protocol
from rollout.protocols.motif import FINAL_FORMAT, MotifSpec
from rollout.records import RESPONSE, VERDICT, Episode, Turn

SYSTEM_PROMPT = "You are a careful assistant that solves math problems, checks its own answers and corrects them."
CORRECT, WRONG = "correct", "wrong"
VERIFY_INSTRUCTION = ("Check the answer above step by step. End with your verdict, exactly one of: "
                      "[VERIFY] correct or [VERIFY] wrong.")
CORRECT_INSTRUCTION = ("The answer above was judged wrong. Find the mistake and solve the question again. "
                       + FINAL_FORMAT)
_VERDICT = re.compile(r"\[VERIFY\]\s*(correct|wrong)\b")
RESPONSE_FORMAT = "reasoning_answer"  # every attempt ends in a boxed answer


def attempt_message(question: str) -> str:
    return f"Question: {question}\n\n{FINAL_FORMAT}"


def verdict_text(verdict: str) -> str:
    return f"[VERIFY] {verdict}"


def parse_verdict(text: str) -> str | None:
    """The last verdict the text states ("correct" or "wrong"), or None when it states neither."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None


def history(episode: Episode, system_prompt: str, until: int | None = None) -> list[dict[str, str]]:
    """The conversation up to and including turn `until` (default: the last), as the model saw it."""
    messages = [{"role": "system", "content": system_prompt}]
    for turn in episode.turns[: None if until is None else until + 1]:
        messages += [{"role": "user", "content": turn.message}, {"role": "assistant", "content": turn.completion.text}]
    return messages


@dataclass(frozen=True)
class SelfCorrectSpec(MotifSpec):
    """MOTIF's common settings (m, sampling, system prompt) with `first_round` sampling every turn."""

    max_attempts: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


def self_correct_rollout(generate: Generate, questions: Sequence[str], spec: SelfCorrectSpec) -> list[Episode]:
    """B questions -> B*m episodes; one batched `generate` per attempt and per verdict across all episodes."""
    system = spec.system_prompt_for(spec.rounds)
    first_spec = dataclasses.replace(spec.first_round, n=spec.samples_per_prompt)
    one = dataclasses.replace(spec.first_round, n=1)
    messages = [attempt_message(q) for q in questions]
    first = generate([history(Episode(0, []), system) + [{"role": "user", "content": m}] for m in messages],
                     first_spec, True)
    episodes = [Episode(b, [Turn(c, messages[b], 1, None, one.temperature)], {"unparsed_verdicts": 0})
                for b in range(len(questions)) for c in first[b]]

    def answer(live: list[Episode], message: str, attempt: int, kind: str) -> None:
        outputs = generate([history(e, system) + [{"role": "user", "content": message}] for e in live], one, True)
        for e, samples in zip(live, outputs):
            e.add(Turn(samples[0], message, attempt, len(e.turns) - 1, one.temperature, kind=kind))

    live = episodes
    for attempt in range(1, spec.max_attempts + 1):
        # A turn that failed to generate ends its episode there (the step drops it and counts it as failed).
        live = [e for e in live if e.turns[-1].completion.finish_reason != ABORTED]
        if not live:
            break
        answer(live, VERIFY_INSTRUCTION, attempt, VERDICT)
        verdicts = [parse_verdict(e.turns[-1].completion.text) for e in live]
        for e, verdict in zip(live, verdicts):
            e.stats["unparsed_verdicts"] += verdict is None and e.turns[-1].completion.finish_reason != ABORTED
        live = [e for e, verdict in zip(live, verdicts) if verdict == WRONG
                and e.turns[-1].completion.finish_reason != ABORTED]
        if attempt == spec.max_attempts or not live:
            break
        answer(live, CORRECT_INSTRUCTION, attempt + 1, RESPONSE)
    return episodes


def attempts(episode: Episode) -> list[int]:
    return [i for i, t in enumerate(episode.turns) if t.kind == RESPONSE]


def _final_attempt(episode: Episode) -> Turn:
    return episode.turns[attempts(episode)[-1]]


def outcomes(episode: Episode, correct: dict[int, bool | None]) -> dict[str, float | None]:
    """One episode's self-correction figures from its graded attempts (None where a grade is missing):
    turn-1 and final accuracy, whether it went incorrect -> correct or correct -> incorrect, its attempts, and
    how often its verdicts were right on its correct attempts and on its wrong ones (None: it had none)."""
    tried = attempts(episode)
    first, final = correct.get(tried[0]), correct.get(tried[-1])
    graded = first is not None and final is not None
    verdict_right = {True: [], False: []}
    for i in tried:
        below = [j for j in episode.children(i) if episode.turns[j].kind == VERDICT]
        if below and correct.get(i) is not None:
            said = parse_verdict(episode.turns[below[0]].completion.text)
            verdict_right[correct[i]].append(said == (CORRECT if correct[i] else WRONG))

    def share(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "turn1_accuracy": float(first) if first is not None else None,
        "final_accuracy": float(final) if final is not None else None,
        "delta_incorrect_to_correct": float(not first and final) if graded else None,
        "delta_correct_to_incorrect": float(first and not final) if graded else None,
        "attempts": float(len(tried)),
        "verdict_accuracy_on_correct": share(verdict_right[True]),
        "verdict_accuracy_on_wrong": share(verdict_right[False]),
    }


def _check(settings) -> None:
    if settings.max_attempts < 1:
        raise ValueError(f"rollout.max_attempts must be >= 1, got {settings.max_attempts}")
    if settings.continuation_policy != "current":
        raise ValueError("rollout.protocol=self_correct samples every turn from the policy being trained: "
                         f"rollout.continuation_policy must be current, got {settings.continuation_policy!r}")


def _spec(common: MotifSpec, settings, tokenizer: str | None = None) -> SelfCorrectSpec:
    # One answer format for every attempt: the final round's system prompt (with its motivation, if any).
    fields = {f.name: getattr(common, f.name) for f in dataclasses.fields(MotifSpec)}
    return SelfCorrectSpec(**{**fields, "rounds": 1, "continuations": 1}, max_attempts=settings.max_attempts)


register_protocol("self_correct", Protocol(
    rollout=self_correct_rollout, check=_check, credits=("every_turn", "final_turn"),
    response_format=lambda settings: RESPONSE_FORMAT, spec=_spec, response=_final_attempt,
    finals=lambda e: [_final_attempt(e)],
    graded=attempts, outcomes=outcomes, system_prompt=lambda settings: SYSTEM_PROMPT,
))
