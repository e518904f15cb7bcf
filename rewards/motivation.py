"""Motivation (MeRF): tell the model, in its system prompt, what it will be rewarded for.

The text is made from the active rewards themselves (their registry descriptions and configured weights), so
it cannot drift from what is actually rewarded. MeRF's ablation tells it other rules on purpose: `mismatched`
(the same components with each other's weights) and `misleading` (rewarded for the opposite of what is scored);
`none` writes nothing, and any other text is written as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from rewards.registry import Reward
from rollout.common import registrar

NO_MOTIVATION = "none"
HEADER = "Your response will be scored by the weighted sum of these rewards:"

# A mode's text from the rewards and the format of the response it is for (None: the trained one).
MOTIVATIONS: dict[str, Callable[[Sequence[Reward], str | None], str]] = {}
register_motivation = registrar(MOTIVATIONS)


def _listing(lines: Sequence[tuple[str, float, str]]) -> str:
    """(name, weight told, description told) per component, under the header."""
    return "\n".join([HEADER] + [f"- {name} (weight {weight:g}): {description}" for name, weight, description in lines])


def mismatched_weights(weights: Sequence[float]) -> list[float]:
    """The weights the mismatched text tells: the configured ones in reverse order of the components."""
    return list(reversed(weights))


@register_motivation("consistent")
def _consistent(rewards: Sequence[Reward], response_format: str | None) -> str:
    return _listing([(r.name, r.weight, r.description_for(response_format)) for r in rewards])


@register_motivation("mismatched")
def _mismatched(rewards: Sequence[Reward], response_format: str | None) -> str:
    told = mismatched_weights([r.weight for r in rewards])
    return _listing([(r.name, w, r.description_for(response_format)) for r, w in zip(rewards, told)])


@register_motivation("misleading")
def _misleading(rewards: Sequence[Reward], response_format: str | None) -> str:
    return _listing([(r.name, r.weight, r.opposite_for(response_format)) for r in rewards])


MODES = (NO_MOTIVATION, *MOTIVATIONS)


def motivation_text(rewards: Sequence[Reward], response_format: str | None = None,
                    mode: str = "consistent") -> str | None:
    """The text `mode` writes for a response of `response_format` (None: the trained one); None for `none`; a
    text of the user's own (any other string) as it is."""
    if mode == NO_MOTIVATION:
        return None
    return MOTIVATIONS[mode](rewards, response_format) if mode in MOTIVATIONS else mode


def motivated_system_prompt(system_prompt: str, rewards: Sequence[Reward], response_format: str | None = None,
                            mode: str = "consistent") -> str:
    text = motivation_text(rewards, response_format, mode)
    return system_prompt if text is None else f"{system_prompt}\n\n{text}"


def check_motivation(mode: str, weights: Sequence[float]) -> None:
    """Config-time: a one-word value must be a mode (a misspelt mode would otherwise be written as the text), and
    the mismatched weights must differ from the configured ones."""
    if not mode.strip():
        raise ValueError(f"reward.motivation is empty: one of {', '.join(MODES)}, or a text of your own")
    if len(mode.split()) == 1 and mode not in MODES:
        close = difflib.get_close_matches(mode, MODES, n=1)
        raise ValueError(f"reward.motivation {mode!r} is not one of {', '.join(MODES)}"
                         f"{f'; did you mean {close[0]}?' if close else ''} (a text of your own has several words)")
    if mode == "mismatched" and mismatched_weights(weights) == list(weights):
        raise ValueError(f"reward.motivation=mismatched tells the components' weights in reverse order, but the "
                         f"weights {list(weights)} read the same reversed: give the components different weights")
