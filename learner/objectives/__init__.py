"""Objectives by name (`learner.policy_loss`): pure loss functions on [batch, tokens] tensors, each with what
the learner must compute for it. The learner runs whichever the config names through one update path.

An objective's `loss(logprobs, response_mask, *, size, **inputs, **options)` returns the micro-batch's share of
the mini-batch loss (aggregated as `aggregation` says, over `size`, the mini-batch's tokens and sequences on
all ranks) and the sums of its metrics over the micro-batch's tokens. Built in: `clipped` (= `ppo_clip`),
`gspo`, `cispo` (policy losses), `sft` and `dpo`. `needs(config)` names the inputs beyond
logprobs and mask: "old_logprobs" (the sampling policy's, for ratios), "ref_logprobs" (the adapter-disabled
reference), "advantages", "behaviour_logprobs" (vLLM's, for truncated importance sampling: `tis.py`, which the
policy losses share). `metrics(config)` lists the keys it returns, so that every rank, one with no samples
included, reduces the same ones. `whole_episodes`: its rows are read an episode at a time (`dpo`: a pair), so
the planner never splits one. `commands`: those that train with it (`train`'s are `learner.policy_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rollout.common import registrar


@dataclass(frozen=True)
class Objective:
    loss: Callable
    needs: Callable[[object], frozenset[str]]
    metrics: Callable[[object], tuple[str, ...]]
    options: Callable[[object], dict]  # the loss's keyword settings from the learner config
    whole_episodes: bool = False
    commands: tuple[str, ...] = ("train",)


OBJECTIVES: dict[str, Objective] = {}
_register = registrar(OBJECTIVES)


def register_objective(name: str, objective: Objective) -> Objective:
    return _register(name)(objective)


from learner.objectives import cispo, clipped, dpo, gspo, sft  # noqa: E402,F401  (each module registers its entries)
