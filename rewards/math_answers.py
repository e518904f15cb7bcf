"""Final-answer extraction and equivalence for math datasets (runs inside the grading workers).

Model text is untrusted: nothing here evaluates it. Numbers are compared exactly with `fractions.Fraction`;
other expressions go through math-verify (LaTeX -> SymPy by a parser, never `eval`/`sympify` of raw text).
Callers use `rewards.grading.grade`, which bounds every call in time; these functions are unbounded.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_ANSWER_CHARS = 1000


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces, or None.

    One pass pairs every brace, so thousands of unbalanced boxes cost linear time, not quadratic.
    """
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for box in reversed(list(_BOX_OPEN.finditer(text))):
        brace = box.end() - 1
        if brace in closing:
            return text[brace + 1 : closing[brace]].strip()
    return None


_ANSWER_MARKER = re.compile(r"answer(?:\s+is)?\s*:|answer\s+is|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|\Z)")


def extract_answer(response: str) -> str | None:
    """The final answer of a model response.

    1. the last balanced `\\boxed{}` / `\\fbox{}`;
    2. else the rest of the line after the last "answer is", "answer:" (also "Final Answer:", "answer is:")
       or GSM8K's "####", up to the end of that sentence, without surrounding `$` and bold markers.
    """
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    found = list(_ANSWER_MARKER.finditer(response))
    if not found:
        return None
    tail = response[found[-1].end() :].split("\n", 1)[0].strip().strip("*").strip()
    tail = _SENTENCE_END.split(tail, maxsplit=1)[0].strip()
    if tail.startswith("$") and tail.endswith("$") and len(tail) > 1:
        tail = tail.strip("$").strip()
    return tail or None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K's gold final answer: the text after the last `####`."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return answer_field.rsplit("####", 1)[1].strip()


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$")
_BOLD = re.compile(r"\\(?:mathbf|textbf|boldsymbol)\{([^{}]*)\}")
_TEXT_UNITS = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}")
_WRAPPERS = [("\\displaystyle", ""), ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\ ", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")]


def _strip_decorations(text: str) -> str:
    text = text.strip().strip("$").strip()
    for old, new in _WRAPPERS:
        text = text.replace(old, new)
    text = _BOLD.sub(r"\1", text)
    text = _TEXT_UNITS.sub("", text)  # units in \text{}: "5 \text{ cm}" -> "5"
    text = text.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    text = text.replace("\\$", "").replace("$", "")
    return text.strip().removesuffix(".").strip()


def parse_number(text: str) -> Fraction | None:
    """A plain decimal number (sign, thousands separators, `$`, `%`, units and trailing zeros allowed)."""
    cleaned = _strip_decorations(text).replace(" ", "")
    if _THOUSANDS.match(cleaned):
        cleaned = cleaned.replace(",", "")
    if len(cleaned) > 64 or not _NUMBER.match(cleaned):
        return None
    return Fraction(cleaned)


def answer_key(answer: str) -> str:
    """A canonical form for counting votes (maj@k): the exact value of a number, else the text without
    spaces, wrappers or case, so surface variants of one answer count together."""
    number = parse_number(answer)
    return str(number) if number is not None else "".join(_unwrap_text(answer).split()).lower()


_ASSIGNMENT = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf|boldsymbol)\{([^{}]*)\}")


def _unwrap_text(text: str) -> str:
    """`\\text{Evelyn}` -> `Evelyn`: keeps the words of text answers."""
    return _TEXT_WRAPPER.sub(r"\1", text.replace("\\displaystyle", "").strip().strip("$")).strip()


def _choice_letter(text: str) -> str | None:
    m = _CHOICE.match(_unwrap_text(text).removesuffix(".").strip())
    return m.group(1).upper() if m else None


def answers_match(predicted: str, gold: str) -> bool:
    """Whether a predicted final answer equals the gold one.

    Numbers compare exactly (so a plain integer never accepts x100 or /100 variants); a multiple-choice
    letter gold accepts only that letter; "x = 3" counts as "3" when the gold is not an equation;
    everything else goes to math-verify with the gold first.
    """
    if len(predicted) > MAX_ANSWER_CHARS:
        return False
    if "=" not in gold:
        predicted = _ASSIGNMENT.sub("", predicted, count=1)
    gold_letter = _choice_letter(gold)
    if gold_letter is not None:
        return _choice_letter(predicted) == gold_letter
    p, g = parse_number(predicted), parse_number(gold)
    if g is not None:
        if p is not None:
            return p == g
        # A gold number against a non-numeric prediction: only math-verify's exact evaluation (e.g. 
        # "\frac{3}{2}" for 1.5) may accept it, never its percentage reading.
    return _math_verify_equal(predicted, gold)


def _math_verify_equal(predicted: str, gold: str) -> bool:
    from math_verify import parse, verify

    # Timeouts are enforced by the grading pool (a killable process), so math-verify's own signal-based
    # alarms, which fail off the main thread, stay off.
    def canonical(text: str) -> str:
        return "".join(_unwrap_text(text).split()).lower()

    if canonical(predicted) == canonical(gold):
        return True
    gold_parsed = parse(f"${gold.strip().strip('$')}$", parsing_timeout=None)
    pred_parsed = parse(f"${predicted.strip().strip('$')}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def grade_unbounded(response: str, gold: str) -> bool:
    """Extraction + comparison with no time bound; call through `rewards.grading`."""
    predicted = extract_answer(response)
    return predicted is not None and answers_match(predicted, gold)
