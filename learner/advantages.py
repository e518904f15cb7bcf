"""Advantage estimators by name (`learner.advantage_estimator`): rewards of a step's samples -> advantages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rollout.common import registrar

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}
register_advantage = registrar(ADVANTAGE_ESTIMATORS)


@register_advantage("grpo")
def grpo_advantages(
    rewards: Sequence[float], group_ids: Sequence[int], *, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - group mean) / (group std + eps); std is the unbiased sample std, 0 for a group of one.

    A group whose rewards are all equal carries no signal: its advantages are exactly 0.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)
    groups = torch.as_tensor(group_ids)
    adv = torch.zeros_like(r)
    for g in groups.unique():
        members = groups == g
        values = r[members]
        centred = values - values.mean()
        if norm_by_std and values.numel() > 1:
            centred = centred / (values.std() + eps)
        adv[members] = centred
    return adv
