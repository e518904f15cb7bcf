"""`sft`: the negative log-likelihood of the response tokens (`motif sft`, warm starts)."""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import BY_EPISODE, MiniBatchSize, aggregate


def sft_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, size: MiniBatchSize,
             aggregation: str = "token_mean", scale_tokens: int | None = None,
             episode_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return aggregate(-logprobs, response_mask, aggregation, size, scale_tokens, episode_tokens), {}


register_objective("sft", Objective(
    loss=sft_loss,
    needs=lambda c: frozenset({"episode_tokens"} if c.loss_aggregation in BY_EPISODE else ()), metrics=lambda c: (),
    options=lambda c: {"aggregation": c.loss_aggregation, "scale_tokens": c.loss_scale_tokens}, commands=("sft",),
))
