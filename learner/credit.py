"""Which turns of an episode are trained, and with what advantage, looked up by name.

`first_round` is MOTIF as published: only round 1 is trained, its advantage from the future accuracy of its
continuations. Other protocols (self-correction, adaptive rounds) register their own assignment here without
touching the training loop.

Every entry is called as `credit(episodes, advantages, *, rewards, counts, estimator, norm_by_std[,
final_scores])`: `rewards` are the episodes' reward totals, and what an entry counts into the dict `counts` is
logged as credit/<key>.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rollout.common import registrar
from learner.records import TrainSample
from rollout.records import MODEL, RESPONSE, TRUNCATED, Episode, Turn

CREDIT: dict[str, Callable[..., list[TrainSample]]] = {}
register_credit = registrar(CREDIT)


def _trained(turn: Turn, advantage: float, episode: int) -> TrainSample:
    return TrainSample(turn.completion.prompt_ids, turn.completion.completion_ids, advantage, turn.temperature,
                       episode=episode, behaviour_logprobs=turn.completion.logprobs,
                       truncated=turn.completion.finish_reason == TRUNCATED)


@register_credit("first_round")
def first_round(episodes: Sequence[Episode], advantages: Sequence[float], **_) -> list[TrainSample]:
    """The root (round 1) of every episode, with its group-normalised advantage. A turn whose advantage is 0
    (its group all scored alike) is trained as every other, under every entry (as verl, TRL and OpenRLHF do):
    it adds no policy gradient, and the token mean counts every sampled turn the same way whatever the credit."""
    return [TrainSample(e.root.completion.prompt_ids, e.root.completion.completion_ids, a, episode=i,
                        behaviour_logprobs=e.root.completion.logprobs,
                        truncated=e.root.completion.finish_reason == TRUNCATED)
            for i, (e, a) in enumerate(zip(episodes, advantages)) if e.root.completion.completion_ids]


@register_credit("every_round")
def every_round(episodes: Sequence[Episode], advantages: Sequence[float], *,
                final_scores: Sequence[Sequence[float | None]], estimator: Callable, norm_by_std: bool, **_
                ) -> list[TrainSample]:
    """Round 1 as in `first_round`, and the continuation rounds too: the k chains of a round-1 sample share
    their round-2 prompt, so they form a group, and every round of a chain gets its final answer's score from
    the configured rewards (`final_scores`, per episode and chain; None where it could not be scored, and
    that chain is left out) normalised within that group. The rounds after round 1 otherwise change only
    through the shared adapter: at a difficulty where most of a solution falls in them, round-1 credit alone
    leaves them untrained. A chain no better or worse than its siblings has advantage 0 and is trained as a
    root with advantage 0 is. Each turn is scored at the temperature it was sampled at; injected turns are
    never trained."""
    samples = first_round(episodes, advantages)
    chains, groups, scores = [], [], []
    for i, e in enumerate(episodes):
        for chain, score in zip(e.chains(), final_scores[i]):
            if score is not None:
                chains.append(chain)
                groups.append(i)
                scores.append(score)
    if not chains:
        return samples
    chain_advantages = estimator(scores, groups, norm_by_std=norm_by_std).tolist()
    for chain, episode, advantage in zip(chains, groups, chain_advantages):
        samples += [_trained(t, advantage, episode) for t in chain if t.role == MODEL and t.completion.completion_ids]
    return samples


@register_credit("every_turn")
def every_turn(episodes: Sequence[Episode], advantages: Sequence[float], **_) -> list[TrainSample]:
    """Every model turn of an episode (self-correction: each attempt and each verdict) with the episode's
    advantage: the outcome of the final answer is credited to everything that led to it. Injected turns are
    never trained; each turn is scored at the temperature it was sampled at."""
    return [_trained(t, a, i) for i, (e, a) in enumerate(zip(episodes, advantages))
            for t in e.turns if t.role == MODEL and t.completion.completion_ids]


@register_credit("final_turn")
def final_turn(episodes: Sequence[Episode], advantages: Sequence[float], **_) -> list[TrainSample]:
    """The episode's last response (the final answer; self-correction: the last attempt, not its verdict) with
    the episode's advantage; the turns before it change only through the shared adapter."""
    samples = []
    for i, (e, a) in enumerate(zip(episodes, advantages)):
        last = [t for t in e.turns if t.role == MODEL and t.kind == RESPONSE][-1:]
        samples += [_trained(t, a, i) for t in last if t.completion.completion_ids]
    return samples


@register_credit("best_worst")
def best_worst(episodes: Sequence[Episode], advantages: Sequence[float], *, rewards: Sequence[float],
               counts: dict, **_) -> list[TrainSample]:
    """On-policy DPO (RLMT; TRL's OnlineDPOTrainer with its two samples): in each prompt's group, the root with
    the highest reward (chosen) against the one with the lowest (rejected), as one episode of two samples in
    that order, which `dpo` reads as a pair. A tie for either side goes to the earlier episode in sampling
    order. A group whose rewards are all equal, one left with a single episode included, gives no pair
    (counted: credit/tied_groups; credit/pairs). Roots with no completion (prompt too long) are left out.
    Scored at temperature 1, the model itself, as `motif dpo` and TRL score a pair, whatever it was sampled at;
    the pair carries no advantage and no vLLM logprobs, which dpo does not read."""
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(episodes):
        if e.root.completion.completion_ids:
            groups.setdefault(e.prompt_index, []).append(i)
    samples, tied = [], 0
    for prompt, members in groups.items():
        # max and min keep the first of equals: the earlier episode.
        best, worst = max(members, key=lambda i: rewards[i]), min(members, key=lambda i: rewards[i])
        if rewards[best] == rewards[worst]:
            tied += 1
            continue
        samples += [TrainSample(episodes[i].root.completion.prompt_ids, episodes[i].root.completion.completion_ids,
                                0.0, temperature=1.0, episode=prompt) for i in (best, worst)]
    counts.update({"tied_groups": tied, "pairs": len(samples) // 2})
    return samples


# Credit that reads each answer turn's score: the reward stage scores the final answers for it.
SCORES_ANSWERS = {"every_round"}
