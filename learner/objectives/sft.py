"""`sft`: the negative log-likelihood of the response tokens (`motif sft`, warm starts)."""

from __future__ import annotations

import torch

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import aggregate


def sft_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, normalizer: float,
             aggregation: str = "token_mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return aggregate(-logprobs, response_mask, aggregation, normalizer), {}


register_objective("sft", Objective(
    loss=sft_loss, needs=lambda c: frozenset(), metrics=lambda c: (),
    options=lambda c: {"aggregation": c.loss_aggregation},
))
