"""How per-token losses become one number (`learner.loss_aggregation`), as a micro-batch's share of its
mini-batch's loss: every mode divides by a size of the whole mini-batch on all ranks (`MiniBatchSize`), so
the shares of its micro-batches and ranks add up to the mini-batch's loss however it is split.

- `token_mean`: sum over the mini-batch's trained tokens / their count. Every token weighs the same.
- `seq_mean_token_mean`: each sequence's token mean, averaged over the mini-batch's sequences (the original
  GRPO; every sequence weighs the same, a long one's tokens less each).
- `seq_mean_token_sum_norm`: sum over tokens / (sequences * `learner.loss_scale_tokens`), Dr.GRPO's constant
  normaliser (the generation budget): no length bias from dividing by a sequence's own length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class MiniBatchSize:
    tokens: int  # trained tokens of the mini-batch, all ranks
    sequences: int  # trained samples of the mini-batch, all ranks


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, size: MiniBatchSize,
              scale_tokens: int | None = None) -> torch.Tensor:
    if mode == "token_mean":
        return (per_token * mask).sum() / max(size.tokens, 1)
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(size.sequences, 1)
    if mode == "seq_mean_token_sum_norm":
        if not scale_tokens:
            raise ValueError("loss aggregation seq_mean_token_sum_norm needs learner.loss_scale_tokens")
        return (per_token * mask).sum() / (max(size.sequences, 1) * scale_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r} (known: {', '.join(AGGREGATIONS)})")
