"""How per-token losses become one number (`learner.loss_aggregation`), as a micro-batch's share of its
mini-batch's loss: every mode divides by a size of the whole mini-batch on all ranks (`MiniBatchSize`), so
the shares of its micro-batches and ranks add up to the mini-batch's loss however it is split.

- `token_mean`: sum over the mini-batch's trained tokens / their count. Every token weighs the same.
- `seq_mean_token_mean`: each sequence's token mean, averaged over the mini-batch's sequences (the original
  GRPO; every sequence weighs the same, a long one's tokens less each).
- `seq_mean_token_sum_norm`: sum over tokens / (sequences * `learner.loss_scale_tokens`), Dr.GRPO's constant
  normaliser (the generation budget): no length bias from dividing by a sequence's own length.
- `episode_mean_token_mean`: each episode's trained tokens, all its turns together, averaged, then the mean over
  the mini-batch's episodes (Delethink, arXiv 2510.06557: every chunk with the episode's advantage, normalised by
  the trace's total length). A long episode weighs as much as a short one, however many turns it trains; with one
  trained turn per episode it is `seq_mean_token_mean`. Each row carries its episode's trained-token count
  (`episode_tokens`); the planner keeps episodes whole on one rank for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "episode_mean_token_mean")
# The modes that read each row's episode: its turns must reach the loss on one rank (learner.batching).
BY_EPISODE = ("episode_mean_token_mean",)


@dataclass(frozen=True)
class MiniBatchSize:
    tokens: int  # trained tokens of the mini-batch, all ranks
    sequences: int  # trained samples of the mini-batch, all ranks
    episodes: int = 0  # the episodes those samples are turns of


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, size: MiniBatchSize,
              scale_tokens: int | None = None, episode_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """`episode_tokens` [rows, 1]: each row's episode's trained tokens in the mini-batch (`episode_mean_token_mean`)."""
    if mode == "token_mean":
        return (per_token * mask).sum() / max(size.tokens, 1)
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(size.sequences, 1)
    if mode == "seq_mean_token_sum_norm":
        if not scale_tokens:
            raise ValueError("loss aggregation seq_mean_token_sum_norm needs learner.loss_scale_tokens")
        return (per_token * mask).sum() / (max(size.sequences, 1) * scale_tokens)
    if mode == "episode_mean_token_mean":
        if episode_tokens is None:
            raise ValueError("loss aggregation episode_mean_token_mean needs each row's episode_tokens")
        return ((per_token * mask).sum(-1) / episode_tokens[:, 0].clamp(min=1)).sum() / max(size.episodes, 1)
    raise ValueError(f"unknown loss aggregation {mode!r} (known: {', '.join(AGGREGATIONS)})")
