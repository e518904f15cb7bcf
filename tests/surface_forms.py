"""Surface forms of a gold answer that a correct grader must accept, and a perturbation it must reject.

Used by the dataset-wide grading tests and available to users checking a new dataset's golds.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"^-?\d+$")


def correct_forms(gold: str) -> dict[str, str]:
    """Model responses, keyed by form name, whose final answer is `gold` in another notation."""
    forms = {
        "boxed": f"Reasoning...\n<answer>\\boxed{{{gold}}}</answer>",
        "answer_is": f"So the answer is {gold}.",
        "answer_is_dollars": f"Therefore, the answer is ${gold}$.",
        "fbox": f"\\fbox{{{gold}}}",
    }
    if "\\frac" in gold:
        dfrac = gold.replace("\\frac", "\\dfrac")
        forms["dfrac"] = f"\\boxed{{{dfrac}}}"
    if gold.startswith("(") and gold.endswith(")") and "\\left" not in gold:
        forms["left_right"] = f"\\boxed{{\\left{gold[:-1]}\\right)}}"
    if _INTEGER.match(gold):
        value = int(gold)
        forms["trailing_zeros"] = f"\\boxed{{{value}.00}}"
        forms["dollars"] = f"\\boxed{{\\${value}}}"
        if abs(value) >= 1000:
            forms["thousands"] = f"\\boxed{{{value:,}}}"
        if not gold.lstrip("-").startswith("0"):
            forms["equation"] = f"\\boxed{{x = {value}}}"
    return forms


def wrong_form(gold: str) -> str:
    """A response whose answer differs from `gold` (off by one for integers, `gold + 1` otherwise)."""
    if _INTEGER.match(gold):
        return f"\\boxed{{{int(gold) + 1}}}"
    return f"\\boxed{{{gold} + 1}}"
