"""The tag shapes of the protocols' turns, defined once: the protocols ask for them in their prompts and carry
their blocks between turns, rewards check them (rewards.format), the toy task writes traces in them. DOTALL
everywhere: block contents span lines in real model output."""

from __future__ import annotations

import re
from dataclasses import dataclass


def _block(tag: str) -> str:
    """One non-empty <tag>...</tag> block that does not itself contain the tag."""
    return rf"<{tag}>(?:(?!<{tag}>|</{tag}>).)+</{tag}>"


# Free text after the thinking (or instead of it): not empty, and no <think> tag of its own. Possessive, so
# a long run of spaces before a stray tag is not retried position by position (quadratic on hostile text).
_RESPONSE = r"(?:(?!</?think>)\S)(?:(?!</?think>).)*+"


def _sequence(*blocks: str) -> re.Pattern:
    return re.compile(r"\A\s*" + r"\s*".join(blocks) + r"\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class FormatSpec:
    name: str
    description: str  # one sentence, written into the prompt by the motivation (MeRF) switch
    pattern: re.Pattern

    def __call__(self, text: str) -> float:
        return 1.0 if self.pattern.match(text) else 0.0


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        # Single-round GRPO, the last MOTIF round, RLMT (think, then answer).
        FormatSpec(
            "reasoning_answer",
            "1 if the response is exactly one <reasoning> block followed by one <answer> block, else 0.",
            _sequence(_block("reasoning"), _block("answer")),
        ),
        # MOTIF rounds before the last: only the progress is carried into the next round.
        FormatSpec(
            "reasoning_progress",
            "1 if the response is exactly one <reasoning> block followed by one <progress> block, else 0.",
            _sequence(_block("reasoning"), _block("progress")),
        ),
        # Adaptive rounds (markovian): a round answers, or hands its progress on.
        FormatSpec(
            "reasoning_progress_or_answer",
            "1 if the response is exactly one <reasoning> block followed by one <answer> block or one <progress> "
            "block, else 0.",
            _sequence(_block("reasoning"), f"(?:{_block('answer')}|{_block('progress')})"),
        ),
        # RLMT (rollout.response_format, single round): think, then respond; a reward model reads the response.
        FormatSpec(
            "think_response",
            "1 if the response is exactly one <think> block followed by a non-empty response without <think> "
            "tags, else 0.",
            _sequence(_block("think"), _RESPONSE),
        ),
        # RLMT's baseline without thinking: the response alone.
        FormatSpec(
            "response",
            "1 if the response is non-empty and has no <think> tags, else 0.",
            _sequence(_RESPONSE),
        ),
        # Self-rewarding correction: each turn answers, then judges its own answer.
        FormatSpec(
            "reasoning_answer_verify",
            "1 if the response is exactly one <reasoning> block, one <answer> block, then one <verify> block "
            "that says correct or wrong, else 0.",
            _sequence(_block("reasoning"), _block("answer"), r"<verify>\s*(?:correct|wrong)\s*</verify>"),
        ),
    )
}


def last_block(text: str, tag: str) -> str | None:
    """Content of the last complete <tag>...</tag> block, or None. Linear time: a regex search from every
    unclosed opening tag would be quadratic on hostile text."""
    close = text.rfind(f"</{tag}>")
    start = text.rfind(f"<{tag}>", 0, close) if close >= 0 else -1
    return text[start + len(tag) + 2 : close].strip() if start >= 0 else None


def extract_progress(text: str) -> str | None:
    """Content of the last <progress> block, or None when there is none."""
    return last_block(text, "progress")
