"""`clipped` (also `ppo_clip`): the PPO/GRPO clipped surrogate, token by token, with separate `clip_low` and
`clip_high` (DAPO's clip-higher: a wider upper bound), plus `kl_coef` times a KL estimate to the reference:

    loss_t = max(-A * r_t, -A * clip(r_t, 1 - clip_low, 1 + clip_high)) + kl_coef * KL_t,  r_t = exp(logp_t - old_t)
"""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import BY_EPISODE, MiniBatchSize, aggregate
from learner.objectives.kl import kl_estimate
from learner.objectives.tis import correction, correction_cap, with_tis


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                      clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token max(-A*ratio, -A*clip(ratio)) and a mask of tokens where clipping bit. `advantages` broadcasts
    over tokens ([batch, 1] for sequence-level GRPO advantages)."""
    ratio = torch.exp(logprobs - old_logprobs)
    return bounded(ratio, advantages, clip_low, clip_high)


def bounded(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float):
    """The pessimistic PPO bound of -A * ratio, and where the clipped side was taken."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(ratio.dtype)


def with_kl(per_token: torch.Tensor, metrics: dict, logprobs: torch.Tensor, mask: torch.Tensor,
            ref_logprobs: torch.Tensor | None, kl_coef: float, kl_estimator: str) -> torch.Tensor:
    """`per_token` plus kl_coef times the KL estimate, when a reference is given (its token sum in metrics)."""
    if ref_logprobs is None:
        return per_token
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)
    metrics["kl"] = (kl * mask).sum()
    return per_token + kl_coef * kl


def clipped_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, old_logprobs: torch.Tensor,
                 advantages: torch.Tensor, size: MiniBatchSize, ref_logprobs: torch.Tensor | None = None,
                 behaviour_logprobs: torch.Tensor | None = None, tis_cap: float | None = None, tis_mode: str = "tis",
                 kl_coef: float = 0.0, kl_estimator: str = "k3", clip_low: float = 0.2, clip_high: float = 0.2,
                 aggregation: str = "token_mean", scale_tokens: int | None = None,
                 episode_tokens: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low=clip_low, clip_high=clip_high)
    metrics = {"clip_frac": (clipped * response_mask).sum()}
    per_token = with_tis(per_token, metrics, response_mask, old_logprobs, behaviour_logprobs, tis_cap, tis_mode)
    per_token = with_kl(per_token, metrics, logprobs, response_mask, ref_logprobs, kl_coef, kl_estimator)
    return aggregate(per_token, response_mask, aggregation, size, scale_tokens, episode_tokens), metrics


def policy_needs(config) -> frozenset[str]:
    return frozenset({"old_logprobs", "advantages"} | ({"ref_logprobs"} if config.kl_coef else set())
                     | ({"behaviour_logprobs"} if correction_cap(config) is not None else set())
                     | ({"episode_tokens"} if config.loss_aggregation in BY_EPISODE else set()))


def policy_metrics(config) -> tuple[str, ...]:
    return ("clip_frac",) + (("kl",) if config.kl_coef else ()) + \
        (("tis_capped_frac",) if correction_cap(config) is not None else ())


def policy_options(config) -> dict:
    return {"kl_coef": config.kl_coef, "kl_estimator": config.kl_estimator, "clip_low": config.clip_low,
            "clip_high": config.clip_high, "aggregation": config.loss_aggregation,
            "scale_tokens": config.loss_scale_tokens, "tis_cap": correction_cap(config),
            "tis_mode": correction(config)}


CLIPPED = Objective(loss=clipped_loss, needs=policy_needs, metrics=policy_metrics, options=policy_options)
register_objective("clipped", CLIPPED)
register_objective("ppo_clip", CLIPPED)
