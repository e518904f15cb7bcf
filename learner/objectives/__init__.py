"""Objectives by name (`learner.policy_loss`): pure loss functions on [batch, tokens] tensors, each with what
the learner must compute for it. The learner runs whichever the config names through one update path.

An objective's `loss(logprobs, response_mask, *, size, **inputs, **options)` returns the micro-batch's share of
the mini-batch loss (aggregated as `aggregation` says, over `size`, the mini-batch's tokens and sequences on
all ranks) and the sums of its metrics over the micro-batch's tokens. Built in: `clipped` (= `ppo_clip`),
`gspo`, `cispo` (policy losses), `sft` and `dpo`. `needs(config)` names the inputs beyond
logprobs and mask: "old_logprobs" (the sampling policy's, for ratios), "ref_logprobs" (the adapter-disabled
reference), "advantages", "behaviour_logprobs" (vLLM's, for truncated importance sampling: `tis.py`, which the
policy losses share), "episode_tokens" (each row's episode's trained tokens, for `episode_mean_token_mean`).
`metrics(config)` lists the keys it returns, so that every rank, one with no samples included, reduces the same
ones. `whole_episodes`: its rows are read an episode at a time (`dpo`: a pair), so
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


def reads_whole_episodes(config, name: str | None = None) -> bool:
    """Whether objective `name` (default `config.policy_loss`) under the learner `config` needs every row of an
    episode in one micro-batch on one rank: it reads them together (dpo's pairs), or its aggregation divides by
    the episode's tokens (`episode_tokens`)."""
    objective = OBJECTIVES[name or config.policy_loss]
    return objective.whole_episodes or "episode_tokens" in objective.needs(config)


from learner.objectives import cispo, clipped, dpo, gspo, sft  # noqa: E402,F401  (each module registers its entries)
