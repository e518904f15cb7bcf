"""`cispo` (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped, stop-gradient importance ratio,
so every token keeps a gradient (PPO's clip zeroes the gradient of the clipped ones):

    loss_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A * logp_t,  r_t = exp(logp_t - old_t)

MiniMax-M1 bounds only the top (a large clip_low, e.g. 1.0, leaves the bottom open).
"""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import MiniBatchSize, aggregate
from learner.objectives.clipped import policy_metrics, policy_needs, policy_options, with_kl
from learner.objectives.tis import with_tis


def cispo_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, old_logprobs: torch.Tensor,
               advantages: torch.Tensor, size: MiniBatchSize, ref_logprobs: torch.Tensor | None = None,
               behaviour_logprobs: torch.Tensor | None = None, tis_cap: float | None = None, tis_mode: str = "tis",
               kl_coef: float = 0.0, kl_estimator: str = "k3", clip_low: float = 0.2, clip_high: float = 0.2,
               aggregation: str = "token_mean", scale_tokens: int | None = None,
               episode_tokens: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ratio = torch.exp(logprobs - old_logprobs).detach()
    weight = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -weight * advantages * logprobs
    metrics = {"clip_frac": ((weight != ratio).to(logprobs.dtype) * response_mask).sum()}
    per_token = with_tis(per_token, metrics, response_mask, old_logprobs, behaviour_logprobs, tis_cap, tis_mode)
    per_token = with_kl(per_token, metrics, logprobs, response_mask, ref_logprobs, kl_coef, kl_estimator)
    return aggregate(per_token, response_mask, aggregation, size, scale_tokens, episode_tokens), metrics


register_objective("cispo", Objective(loss=cispo_loss, needs=policy_needs, metrics=policy_metrics,
                                      options=policy_options))
