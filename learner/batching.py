"""The one mini/micro/rank planner: a step's samples as mini-batches (one optimizer step each), each split
across the ranks with balanced token counts, then into micro-batches."""

from __future__ import annotations

from collections.abc import Sequence

from learner.records import TrainSample
from rollout.pool import balance

# One rank's share of one mini-batch: micro-batches of indices into that rank's samples, and the mini-batch's
# token count over all ranks (what a token-mean loss divides by).
MiniBatchPlan = tuple[list[list[int]], int]


def plan_batch(samples: Sequence[TrainSample], ranks: int, mini_batch_size: int,
               micro_batch_size: int) -> tuple[list[list[TrainSample]], list[list[MiniBatchPlan]]]:
    """Each rank's samples and plan. Ranks with fewer micro-batches get empty ones, so all make the same
    collective calls (in the update and in the old/reference logprob passes, which run over the same
    micro-batches); a rank may hold no sample of a mini-batch at all. One rank keeps the samples' order."""
    local: list[list[TrainSample]] = [[] for _ in range(ranks)]
    plans: list[list[MiniBatchPlan]] = [[] for _ in range(ranks)]
    for start in range(0, len(samples), mini_batch_size):
        mini = list(range(start, min(start + mini_batch_size, len(samples))))
        parts = balance([len(samples[i].completion_ids) + len(samples[i].prompt_ids) / 4 for i in mini], ranks)
        micros_per_rank = []
        for r, part in enumerate(parts):
            indices = list(range(len(local[r]), len(local[r]) + len(part)))
            local[r] += [samples[mini[i]] for i in part]
            micros_per_rank.append([indices[j : j + micro_batch_size] for j in range(0, len(indices), micro_batch_size)])
        depth = max(len(m) for m in micros_per_rank)
        tokens = sum(len(samples[i].completion_ids) for i in mini)
        for r, micros in enumerate(micros_per_rank):
            plans[r].append((micros + [[] for _ in range(depth - len(micros))], tokens))
    return local, plans
