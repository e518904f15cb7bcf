"""`dpo` (Direct Preference Optimization, arXiv 2305.18290; TRL's `loss_type="sigmoid"`): a prompt's chosen
completion c over its rejected one r, each against the reference (the model with the adapter off, as for KL),
on sequence logprobs (sums over the completion's tokens):

    h = (logp(c) - ref(c)) - (logp(r) - ref(r)),  loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)

averaged over the mini-batch's pairs. eps is TRL's `label_smoothing` (cDPO: the share of pairs taken to be
mislabelled; 0, plain DPO, by default). The rows come two by two, chosen then rejected: a pair is one episode,
which the planner keeps whole and in order (`whole_episodes`). `learner.loss_aggregation` does not apply.
`motif dpo` reads the pairs from a file; `motif train` makes them from the policy's own samples
(`learner.credit=best_worst`: each group's best response against its worst).

Metrics (TRL's rewards/* and logps/*): the implicit rewards beta (logp - ref) of either side, their margin, the
share of pairs whose chosen reward is the higher (`dpo/reward_accuracy`), and the policy's sequence logprobs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learner.objectives import Objective, register_objective
from learner.objectives.aggregation import MiniBatchSize

METRICS = ("dpo/reward_chosen", "dpo/reward_rejected", "dpo/reward_margin", "dpo/reward_accuracy",
           "dpo/logp_chosen", "dpo/logp_rejected")


def dpo_loss(logprobs: torch.Tensor, response_mask: torch.Tensor, *, ref_logprobs: torch.Tensor,
             size: MiniBatchSize, beta: float = 0.1, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if logprobs.shape[0] % 2:
        raise ValueError(f"dpo reads its rows as (chosen, rejected) pairs, got {logprobs.shape[0]} rows")
    policy = (logprobs * response_mask).sum(-1).view(-1, 2)  # [pairs, (chosen, rejected)]
    ratios = policy - (ref_logprobs * response_mask).sum(-1).view(-1, 2)
    h = beta * (ratios[:, 0] - ratios[:, 1])
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    pairs = max(size.sequences // 2, 1)  # of the mini-batch, all ranks
    rewards = beta * ratios.detach()
    per_pair = {"dpo/reward_chosen": rewards[:, 0], "dpo/reward_rejected": rewards[:, 1],
                "dpo/reward_margin": rewards[:, 0] - rewards[:, 1],
                "dpo/reward_accuracy": (rewards[:, 0] > rewards[:, 1]).to(rewards.dtype),
                "dpo/logp_chosen": policy[:, 0].detach(), "dpo/logp_rejected": policy[:, 1].detach()}
    # The learner divides every metric's sum by the trained tokens: weighted by the mini-batch's tokens per
    # pair, a pair's values come out as the mean over pairs, as the loss does.
    weight = size.tokens / pairs
    return losses.sum() / pairs, {key: values.sum() * weight for key, values in per_pair.items()}


register_objective("dpo", Objective(
    loss=dpo_loss, needs=lambda c: frozenset({"ref_logprobs"}), metrics=lambda c: METRICS,
    options=lambda c: {"beta": c.dpo_beta, "label_smoothing": c.dpo_label_smoothing},
    whole_episodes=True, commands=("dpo", "train"),
))
