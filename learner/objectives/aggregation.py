"""How per-token losses become one number (`learner.loss_aggregation`)."""

from __future__ import annotations

import torch

# token_mean: every trained token of the mini-batch weighs the same (the mean over the mini-batch's tokens on
# all ranks; `normalizer` is that token count).
AGGREGATIONS = ("token_mean",)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, normalizer: float) -> torch.Tensor:
    if mode == "token_mean":
        return (per_token * mask).sum() / normalizer
    raise ValueError(f"unknown loss aggregation {mode!r} (known: {', '.join(AGGREGATIONS)})")
