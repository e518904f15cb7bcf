"""Per-token estimates of KL(policy || reference) from the sampled tokens' logprobs (`learner.kl_estimator`),
with d = ref - policy (Schulman's k1, k2, k3):

- `k1`: -d, unbiased, can be negative;
- `k2`: d^2 / 2, biased, non-negative, low variance;
- `k3`: exp(d) - d - 1, unbiased and non-negative (the GRPO paper's).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    d = ref_logprobs - logprobs
    if estimator == "k3":
        return torch.exp(d) - d - 1
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k1":
        return -d
    raise ValueError(f"unknown KL estimator {estimator!r} (known: {', '.join(KL_ESTIMATORS)})")
