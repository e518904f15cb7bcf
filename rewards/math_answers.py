"""Final-answer extraction and comparison for math datasets.

Model text is untrusted: nothing here evaluates it; numbers are parsed with `fractions.Fraction`.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces, or None."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    while start >= 0:
        i = text.find("{", start)
        if i >= 0 and text[start:i].strip() in _BOX_COMMANDS:
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
        # Unbalanced or malformed: try the previous box.
        start = max(text.rfind(cmd, 0, start) for cmd in _BOX_COMMANDS)
    return None


_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)


def extract_answer(response: str) -> str | None:
    """The final answer of a model response.

    The last balanced `\\boxed{}`/`\\fbox{}`; failing that, the last "the answer is X" phrase.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(response)
    return matches[-1].strip() if matches else None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K's gold final answer: the text after the last `####`."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return answer_field.rsplit("####", 1)[1].strip()


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


def parse_number(text: str) -> Fraction | None:
    """A plain number in `text` (thousands separators, `$`, `%`, `\\!` and trailing dots removed)."""
    cleaned = text.strip().replace(",", "").replace("\\!", "").replace("\\$", "").replace("$", "")
    cleaned = cleaned.rstrip(".").rstrip("%").replace("\\%", "").strip()
    if len(cleaned) > 64 or not _NUMBER.match(cleaned):
        return None
    return Fraction(cleaned)


def answers_match(predicted: str, gold: str) -> bool:
    """Numeric equality when both parse as numbers, else exact match after whitespace removal."""
    p, g = parse_number(predicted), parse_number(gold)
    if p is not None and g is not None:
        return p == g
    return "".join(predicted.split()) == "".join(gold.split())


def grade(response: str, gold: str) -> bool:
    """True when the final answer extracted from `response` equals the gold final answer."""
    predicted = extract_answer(response)
    return predicted is not None and answers_match(predicted, gold)
