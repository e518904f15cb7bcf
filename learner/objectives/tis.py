"""Token-level truncated importance sampling (`learner.tis_cap`; Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"): vLLM samples from its own numerics, not the learner's, so each
token's policy loss is reweighed by how much likelier the learner found the token than vLLM did, truncated from
above so that a token vLLM all but never samples cannot dominate:

    loss_t <- sg(min(exp(old_t - vllm_t), cap)) * loss_t

old_t is the learner's logprob of the token before the update, vllm_t vLLM's at the temperature it was sampled
at. Where they agree the weight is 1 and the loss is the on-policy one. The KL term is not reweighed (as in verl
and TRL). `tis_capped_frac`: the share of trained tokens whose weight the cap bounds.

The same weight corrects for staleness (rollout.max_staleness: rollouts sampled under an adapter S versions old).
Then old_t is the proximal policy (the learner before this step's update), the clip bounds the update around it,
and the weight carries the samples from the behaviour policy (vLLM's, under the old adapter) to it: AReaL's
decoupled objective. learner.correction=decoupled weighs by the ratio itself and leaves out the tokens whose
ratio is above the cap (AReaL's behav_imp_weight_cap) rather than truncating them; tis truncates.
"""

from __future__ import annotations

import torch


CORRECTIONS = ("auto", "none", "tis", "decoupled")
DEFAULT_CAP = 2.0  # where learner.tis_cap is unset and a correction is on (verl and TRL use 2 to 3)


def correction(config) -> str:
    """The correction a learner config applies: "tis", "decoupled" or "none" ("auto" reads learner.tis_cap; the
    run's config has already made it "tis" where rollout.max_staleness >= 1, in `for_staleness`)."""
    if config.correction == "auto":
        return "tis" if config.tis_cap is not None else "none"
    return config.correction


def for_staleness(config, max_staleness: int):
    """The learner config a run with `max_staleness` trains under: "auto" becomes "tis" when rollouts may be
    older than the adapter trained (on by default: uncorrected stale samples are trained as if on-policy)."""
    from dataclasses import replace

    if config.correction == "auto" and max_staleness >= 1 and config.policy_loss != "dpo":
        return replace(config, correction="tis")
    return config


def correction_cap(config) -> float | None:
    """The cap of the correction a config applies; None: none."""
    return None if correction(config) == "none" else config.tis_cap or DEFAULT_CAP


def with_tis(per_token: torch.Tensor, metrics: dict, mask: torch.Tensor, old_logprobs: torch.Tensor,
             behaviour_logprobs: torch.Tensor | None, cap: float | None, mode: str = "tis") -> torch.Tensor:
    """`per_token` weighed by the importance ratio, when a cap is given (its capped tokens in metrics): truncated
    at the cap ("tis"), or 0 above it ("decoupled")."""
    if cap is None:
        return per_token
    ratio = torch.exp(old_logprobs - behaviour_logprobs).detach()
    metrics["tis_capped_frac"] = ((ratio > cap).to(per_token.dtype) * mask).sum()
    if mode == "decoupled":
        return torch.where(ratio > cap, torch.zeros_like(ratio), ratio) * per_token
    return torch.clamp(ratio, max=cap) * per_token
