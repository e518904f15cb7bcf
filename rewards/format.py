"""Format rewards: does a response have exactly the tag structure its protocol asks for (the shapes are the
protocols' own, rollout.protocols.formats), and the answer part a reward model should see."""

from __future__ import annotations

import re

from rollout.protocols.formats import FORMATS, FormatSpec, extract_progress, last_block

__all__ = ["FORMATS", "FormatSpec", "extract_progress", "last_block", "strip_thinking"]

_THINKING_OPEN = re.compile(r"<(reasoning|think)>")


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
