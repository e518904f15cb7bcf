"""`clipped`: the PPO/GRPO clipped surrogate with an optional k3 KL term to the reference policy."""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import aggregate


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative KL(policy || reference) estimate: exp(d) - d - 1, d = ref - policy."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                      clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token max(-A*ratio, -A*clip(ratio)) and a mask of tokens where clipping bit. `advantages` broadcasts
    over tokens ([batch, 1] for sequence-level GRPO advantages)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(logprobs.dtype)


def clipped_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, old_logprobs: torch.Tensor,
                 advantages: torch.Tensor, normalizer: float, ref_logprobs: torch.Tensor | None = None,
                 kl_coef: float = 0.0, clip_low: float = 0.2, clip_high: float = 0.2,
                 aggregation: str = "token_mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The surrogate plus `kl_coef` times k3 KL per token (when `ref_logprobs` is given), aggregated."""
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low=clip_low, clip_high=clip_high)
    metrics = {"clip_frac": (clipped * response_mask).sum()}
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + kl_coef * kl
        metrics["kl"] = (kl * response_mask).sum()
    return aggregate(per_token, response_mask, aggregation, normalizer), metrics


register_objective("clipped", Objective(
    loss=clipped_loss,
    needs=lambda c: frozenset({"old_logprobs", "advantages"} | ({"ref_logprobs"} if c.kl_coef else set())),
    metrics=lambda c: ("clip_frac", "kl") if c.kl_coef else ("clip_frac",),
    options=lambda c: {"kl_coef": c.kl_coef, "clip_low": c.clip_low, "clip_high": c.clip_high,
                       "aggregation": c.loss_aggregation},
))
