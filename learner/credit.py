"""Which tokens of a multi-round trajectory are trained, and with what advantage, looked up by name.

`first_round` is MOTIF as published: only round 1 is trained, its advantage from the future accuracy of its
continuations. Other protocols (self-correction, adaptive rounds) register their own assignment here without
touching the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from learner.registry import registrar
from learner.records import TrainSample
from rollout.records import MotifTrajectory

CREDIT: dict[str, Callable[..., list[TrainSample]]] = {}
register_credit = registrar(CREDIT)


@register_credit("first_round")
def first_round(trajectories: Sequence[MotifTrajectory], advantages: Sequence[float], **_) -> list[TrainSample]:
    """Round 1 of every trajectory, with its group-normalised advantage."""
    return [TrainSample(t.first.prompt_ids, t.first.completion_ids, a)
            for t, a in zip(trajectories, advantages) if t.first.completion_ids]


@register_credit("every_round")
def every_round(trajectories: Sequence[MotifTrajectory], advantages: Sequence[float], *,
                final_scores: Sequence[Sequence[float | None]], estimator: Callable, norm_by_std: bool,
                continuation_temperature: float) -> list[TrainSample]:
    """Round 1 as in `first_round`, and the continuation rounds too: the k chains of a round-1 sample share
    their round-2 prompt, so they form a group, and every round of a chain gets its final answer's score from
    the configured rewards (`final_scores`, per trajectory and chain; None where it could not be scored, and
    that chain is left out) normalised within that group. The rounds after round 1 otherwise change only
    through the shared adapter: at a difficulty where most of a solution falls in them, round-1 credit alone
    leaves them untrained. A chain no better or worse than its siblings carries no signal and is left out."""
    samples = first_round(trajectories, advantages)
    chains, groups, scores = [], [], []
    for i, t in enumerate(trajectories):
        for chain, score in zip(t.chains, final_scores[i]):
            if score is not None:
                chains.append(chain)
                groups.append(i)
                scores.append(score)
    if not chains:
        return samples
    chain_advantages = estimator(scores, groups, norm_by_std=norm_by_std).tolist()
    for chain, advantage in zip(chains, chain_advantages):
        if advantage == 0.0:
            continue
        samples += [TrainSample(c.prompt_ids, c.completion_ids, advantage, continuation_temperature)
                    for c in chain if c.completion_ids]
    return samples


# Credit that reads each answer turn's score: the reward stage scores the final answers for it.
SCORES_ANSWERS = {"every_round"}
