"""The one mini/micro/rank planner: a step's samples as mini-batches (one optimizer step each), each split
across the ranks with balanced token counts, then into micro-batches.

A mini-batch is `mini_batch_size` episodes (root samples, as verl's ppo_mini_batch_size counts prompts), each
with all its trained turns, so one setting means the same under every credit and protocol; which episodes
go together is shuffled with `shuffle_seed`. A sample without an episode is one of its own (SFT). An objective
that reads an episode's rows together (`dpo`: a pair, chosen then rejected) plans with `whole_episodes`: no
episode is then split across ranks or micro-batches, and its samples keep their order."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from learner.objectives.aggregation import MiniBatchSize
from learner.records import TrainSample
from rollout.common import balance

# One rank's share of one mini-batch: micro-batches of indices into that rank's samples, and the mini-batch's
# tokens and sequences over all ranks (what the loss aggregation divides by).
MiniBatchPlan = tuple[list[list[int]], MiniBatchSize]


def episodes_of(samples: Sequence[TrainSample], indices: Iterable[int]) -> dict[object, list[int]]:
    """`indices` by the episode their sample is a turn of, each in the order given."""
    episodes: dict[object, list[int]] = {}
    for i in indices:
        episode = getattr(samples[i], "episode", None)  # SFT samples have none: each is its own
        episodes.setdefault(("own", i) if episode is None else episode, []).append(i)
    return episodes


def mini_batches(samples: Sequence[TrainSample], mini_batch_size: int,
                 shuffle_seed: str | None = None) -> list[list[int]]:
    """Sample indices per mini-batch: `mini_batch_size` whole episodes each, in the samples' order within it."""
    episodes = episodes_of(samples, range(len(samples)))
    order = list(episodes)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    groups = [order[j : j + mini_batch_size] for j in range(0, len(order), mini_batch_size)]
    return [sorted(i for key in group for i in episodes[key]) for group in groups]


def pack(units: list[list[int]], micro_batch_size: int) -> list[list[int]]:
    """Consecutive units as micro-batches of at most `micro_batch_size` samples; a larger unit is one alone,
    never split. Units of one sample: plain slices of `micro_batch_size`."""
    micros: list[list[int]] = []
    for unit in units:
        if micros and len(micros[-1]) + len(unit) <= micro_batch_size:
            micros[-1] += unit
        else:
            micros.append(list(unit))
    return micros


def plan_batch(samples: Sequence[TrainSample], ranks: int, mini_batch_size: int, micro_batch_size: int,
               shuffle_seed: str | None = None, whole_episodes: bool = False
               ) -> tuple[list[list[TrainSample]], list[list[MiniBatchPlan]]]:
    """Each rank's samples and plan. Ranks with fewer micro-batches get empty ones, so all make the same
    collective calls (in the update and in the old/reference logprob passes, which run over the same
    micro-batches); a rank may hold no sample of a mini-batch at all. One rank, one mini-batch: the samples'
    order. `whole_episodes`: the mini-batch's episodes are what is shared out and packed, not its samples."""
    local: list[list[TrainSample]] = [[] for _ in range(ranks)]
    plans: list[list[MiniBatchPlan]] = [[] for _ in range(ranks)]
    for mini in mini_batches(samples, mini_batch_size, shuffle_seed):
        units = list(episodes_of(samples, mini).values()) if whole_episodes else [[i] for i in mini]
        costs = [sum(len(samples[i].completion_ids) + len(samples[i].prompt_ids) / 4 for i in unit) for unit in units]
        micros_per_rank = []
        for r, part in enumerate(balance(costs, ranks)):
            local_units = []
            for u in part:
                local_units.append(list(range(len(local[r]), len(local[r]) + len(units[u]))))
                local[r] += [samples[i] for i in units[u]]
            micros_per_rank.append(pack(local_units, micro_batch_size))
        depth = max(len(m) for m in micros_per_rank)
        size = MiniBatchSize(sum(len(samples[i].completion_ids) for i in mini), len(mini),
                             len(episodes_of(samples, mini)))
        for r, micros in enumerate(micros_per_rank):
            plans[r].append((micros + [[] for _ in range(depth - len(micros))], size))
    return local, plans
