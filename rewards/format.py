"""Format rewards: does a response have exactly the tag structure its protocol asks for.

Each protocol's turn has one shape; `FORMATS` names them, and the protocol says which one a response should
follow. DOTALL everywhere: block contents span lines in real model output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _block(tag: str) -> str:
    """One non-empty <tag>...</tag> block that does not itself contain the tag."""
    return rf"<{tag}>(?:(?!<{tag}>|</{tag}>).)+</{tag}>"


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
        # Self-rewarding correction: each turn answers, then judges its own answer.
        FormatSpec(
            "reasoning_answer_verify",
            "1 if the response is exactly one <reasoning> block, one <answer> block, then one <verify> block "
            "that says correct or wrong, else 0.",
            _sequence(_block("reasoning"), _block("answer"), r"<verify>\s*(?:correct|wrong)\s*</verify>"),
        ),
    )
}

_THINKING_OPEN = re.compile(r"<(reasoning|think)>")


def last_block(text: str, tag: str) -> str | None:
    """Content of the last complete <tag>...</tag> block, or None. Linear time: a regex search from every
    unclosed opening tag would be quadratic on hostile text."""
    close = text.rfind(f"</{tag}>")
    start = text.rfind(f"<{tag}>", 0, close) if close >= 0 else -1
    return text[start + len(tag) + 2 : close].strip() if start >= 0 else None


def extract_progress(text: str) -> str | None:
    """Content of the last <progress> block, or None when there is none."""
    return last_block(text, "progress")


def strip_thinking(text: str) -> str:
    """The answer part of a response, as a reward model should see it.

    The last <answer> block when there is one; otherwise the text with every <reasoning>/<think> block
    removed, and an unclosed one dropped to the end (unfinished thinking is not an answer).
    """
    answer = last_block(text, "answer")
    if answer is not None:
        return answer
    kept, position = [], 0
    while (opening := _THINKING_OPEN.search(text, position)) is not None:
        kept.append(text[position : opening.start()])
        closing = f"</{opening.group(1)}>"
        end = text.find(closing, opening.end())
        if end < 0:
            position = len(text)
            break
        position = end + len(closing)
    kept.append(text[position:])
    return "".join(kept).strip()
