"""Token-level truncated importance sampling (`learner.tis_cap`; Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"): vLLM samples from its own numerics, not the learner's, so each
token's policy loss is reweighed by how much likelier the learner found the token than vLLM did, truncated from
above so that a token vLLM all but never samples cannot dominate:

    loss_t <- sg(min(exp(old_t - vllm_t), cap)) * loss_t

old_t is the learner's logprob of the token before the update, vllm_t vLLM's at the temperature it was sampled
at. Where they agree the weight is 1 and the loss is the on-policy one. The KL term is not reweighed (as in verl
and TRL). `tis_capped_frac`: the share of trained tokens whose weight the cap bounds.
"""

from __future__ import annotations

import torch


def with_tis(per_token: torch.Tensor, metrics: dict, mask: torch.Tensor, old_logprobs: torch.Tensor,
             behaviour_logprobs: torch.Tensor | None, cap: float | None) -> torch.Tensor:
    """`per_token` weighed by the truncated importance ratio, when a cap is given (its capped tokens in metrics)."""
    if cap is None:
        return per_token
    ratio = torch.exp(old_logprobs - behaviour_logprobs).detach()
    metrics["tis_capped_frac"] = ((ratio > cap).to(per_token.dtype) * mask).sum()
    return torch.clamp(ratio, max=cap) * per_token
