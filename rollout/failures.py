"""Why a Ray actor failed, in one line: shared by the rollout pool, the learner group and the reward model."""

from __future__ import annotations

import re

EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\w*: ")


class WorkerStartFailed(RuntimeError):
    """A worker died while starting: its own error, not a fault to recover from."""


def failure_cause(error: Exception) -> str:
    """The useful line of why an actor or one of its calls failed: the last exception line of its traceback
    (with the reason that pydantic puts on the line after it)."""
    lines = str(getattr(error, "error_msg", None) or error).splitlines()
    found = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    if not found:
        return lines[-1].strip() if lines else type(error).__name__
    i = found[-1]
    cause = lines[i].strip()
    if re.search(r"validation errors? for", cause) and i + 1 < len(lines):
        cause += ": " + lines[i + 1].strip()
    return cause if len(cause) <= 500 else cause[:497] + "..."
