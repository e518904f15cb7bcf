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
                golds: Sequence[str], estimator: Callable, norm_by_std: bool,
                continuation_temperature: float) -> list[TrainSample]:
    """Round 1 as in `first_round`, and the continuation rounds too: the k chains of a round-1 sample share
    their round-2 prompt, so they form a group, and every round of a chain gets the correctness of the chain's
    final answer (against `golds`, one per trajectory) normalised within that group. The rounds after round 1
    otherwise change only through the shared adapter: at a difficulty where most of a solution falls in them,
    round-1 credit alone leaves them untrained. A chain no better or worse than its siblings carries no signal
    and is left out."""
    from rewards.motif import chain_correctness

    samples = first_round(trajectories, advantages)
    with_chains = [(i, t) for i, t in enumerate(trajectories) if t.chains]
    if not with_chains:
        return samples
    correct = chain_correctness([t.final_texts() for _, t in with_chains], [golds[i] for i, _ in with_chains])
    chains = [chain for _, t in with_chains for chain in t.chains]
    groups = [i for i, t in with_chains for _ in t.chains]
    chain_advantages = estimator([c for per_sample in correct for c in per_sample], groups,
                                 norm_by_std=norm_by_std).tolist()
    for chain, advantage in zip(chains, chain_advantages):
        if advantage == 0.0:
            continue
        samples += [TrainSample(c.prompt_ids, c.completion_ids, advantage, continuation_temperature)
                    for c in chain if c.completion_ids]
    return samples
