"""Format rewards: does a round's output have exactly the tag structure its protocol asks for.

DOTALL everywhere: block contents span lines in real model output.
"""

from __future__ import annotations

import re

_REASONING_THEN_PROGRESS = re.compile(
    r"\A\s*<reasoning>(?:(?!<reasoning>|</reasoning>).)+</reasoning>\s*"
    r"<progress>(?:(?!<progress>|</progress>).)+</progress>\s*\Z",
    re.DOTALL,
)
_REASONING_THEN_ANSWER = re.compile(
    r"\A\s*<reasoning>(?:(?!<reasoning>|</reasoning>).)+</reasoning>\s*"
    r"<answer>(?:(?!<answer>|</answer>).)+</answer>\s*\Z",
    re.DOTALL,
)
_PROGRESS = re.compile(r"<progress>(.*?)</progress>", re.DOTALL)


def intermediate_round_format(text: str) -> float:
    """1.0 when the text is one <reasoning> block followed by one <progress> block, else 0.0."""
    return 1.0 if _REASONING_THEN_PROGRESS.match(text) else 0.0


def final_round_format(text: str) -> float:
    """1.0 when the text is one <reasoning> block followed by one <answer> block, else 0.0."""
    return 1.0 if _REASONING_THEN_ANSWER.match(text) else 0.0


def extract_progress(text: str) -> str | None:
    """Content of the last <progress> block, or None when there is none."""
    found = _PROGRESS.findall(text)
    return found[-1].strip() if found else None
