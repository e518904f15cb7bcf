"""Advantage estimators by name (`learner.advantage_estimator`): the rewards of a step's samples and the group
(prompt) of each -> one advantage per sample, broadcast over its tokens (outcome rewards).

- `grpo`: (r - group mean) / (group std + eps); `learner.norm_adv_by_std=false` leaves out the division.
- `dr_grpo`: r - group mean (Dr.GRPO: no std normalisation, which favours groups that barely differ).
- `rloo`: r - mean of the other samples of the group = n / (n - 1) * (r - group mean) (REINFORCE leave-one-out).
- `reinforce_pp`: (r - batch mean) / (batch std + eps), groups ignored (REINFORCE++'s batch normalisation).
"""

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


def _group_centred(rewards: Sequence[float], group_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    groups = torch.as_tensor(group_ids)
    centred = torch.zeros_like(r)
    sizes = torch.zeros_like(r)
    for g in groups.unique():
        members = groups == g
        centred[members] = r[members] - r[members].mean()
        sizes[members] = float(members.sum())
    return r, centred, sizes


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Sequence[float], group_ids: Sequence[int], **_) -> torch.Tensor:
    return _group_centred(rewards, group_ids)[1]


@register_advantage("rloo")
def rloo_advantages(rewards: Sequence[float], group_ids: Sequence[int], **_) -> torch.Tensor:
    _, centred, sizes = _group_centred(rewards, group_ids)
    return torch.where(sizes > 1, centred * sizes / (sizes - 1).clamp(min=1), torch.zeros_like(centred))


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(rewards: Sequence[float], group_ids: Sequence[int], *, eps: float = 1e-6,
                            **_) -> torch.Tensor:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    centred = r - r.mean()
    return centred / (r.std() + eps) if r.numel() > 1 else centred

