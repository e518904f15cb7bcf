"""GRPO numerics: advantage estimators and the clipped policy loss, looked up by name.

Registries let the config pick a variant by name, and later variants (Dr.GRPO, DAPO clip-higher,
sequence-level aggregation) register beside these without touching the learner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}


def registrar(table: dict):
    """A decorator factory that files a function in `table` under a name: `@registrar(TABLE)("name")`."""
    def register(name: str):
        def wrap(fn):
            table[name] = fn
            return fn

        return wrap

    return register


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


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative KL(policy || reference) estimate: exp(d) - d - 1, d = ref - policy."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO surrogate max(-A*ratio, -A*clip(ratio)) and a mask of tokens where clipping bit.

    `advantages` broadcasts over tokens (shape [batch, 1] for sequence-level GRPO advantages).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(logprobs.dtype)


POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {"clipped": clipped_policy_loss}
