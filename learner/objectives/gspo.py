"""`gspo` (Group Sequence Policy Optimization, arXiv 2507.18071): the clipped surrogate on a sequence-level
ratio, the geometric mean of the sequence's token ratios, so a whole sequence is clipped or not:

    s_i = exp(mean_t (logp_t - old_t)),  loss_t = max(-A * s_it, -A * clip(s_it, 1 - clip_low, 1 + clip_high))

with s_it = sg(s_i) * exp(logp_t - sg(logp_t)): equal to s_i in value, its gradient through each token
(GSPO-token, as verl writes it). GSPO's paper clips at 3e-4 / 4e-4; set clip_low / clip_high accordingly.
"""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import MiniBatchSize, aggregate
from learner.objectives.clipped import bounded, policy_metrics, policy_needs, policy_options, with_kl
from learner.objectives.tis import with_tis


def gspo_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, old_logprobs: torch.Tensor,
              advantages: torch.Tensor, size: MiniBatchSize, ref_logprobs: torch.Tensor | None = None,
              behaviour_logprobs: torch.Tensor | None = None, tis_cap: float | None = None, tis_mode: str = "tis",
              kl_coef: float = 0.0, kl_estimator: str = "k3", clip_low: float = 3e-4, clip_high: float = 4e-4,
              aggregation: str = "token_mean", scale_tokens: int | None = None,
              episode_tokens: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lengths = response_mask.sum(-1).clamp(min=1)
    sequence_log_ratio = ((logprobs - old_logprobs) * response_mask).sum(-1) / lengths
    ratio = torch.exp(logprobs - logprobs.detach() + sequence_log_ratio.detach()[:, None])
    per_token, clipped = bounded(ratio, advantages, clip_low, clip_high)
    metrics = {"clip_frac": (clipped * response_mask).sum()}
    per_token = with_tis(per_token, metrics, response_mask, old_logprobs, behaviour_logprobs, tis_cap, tis_mode)
    per_token = with_kl(per_token, metrics, logprobs, response_mask, ref_logprobs, kl_coef, kl_estimator)
    return aggregate(per_token, response_mask, aggregation, size, scale_tokens, episode_tokens), metrics


register_objective("gspo", Objective(loss=gspo_loss, needs=policy_needs, metrics=policy_metrics,
                                     options=policy_options))
