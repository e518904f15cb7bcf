"""Motivation (MeRF): tell the model, in its system prompt, what it will be rewarded for.

The text is made from the active rewards themselves (their registry descriptions and configured weights), so
it cannot drift from what is actually rewarded.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewards.registry import Reward


def motivation_text(rewards: Sequence[Reward], response_format: str | None = None) -> str:
    """The rewards' descriptions as they apply to a response of `response_format` (None: the trained one)."""
    lines = ["Your response will be scored by the weighted sum of these rewards:"]
    lines += [f"- {r.name} (weight {r.weight:g}): {r.description_for(response_format)}" for r in rewards]
    return "\n".join(lines)


def motivated_system_prompt(system_prompt: str, rewards: Sequence[Reward], response_format: str | None = None) -> str:
    return f"{system_prompt}\n\n{motivation_text(rewards, response_format)}"
