"""One training step, as a short sequence of calls: rollout -> score -> credit -> train -> push. It knows nothing
of when it runs: evaluation, checkpoints and what to do after a step with nothing to learn from belong to the
run (cluster/loop/train.py), and when rollouts and pushes happen to its schedule (sync.py, overlap.py), which
call sample_step and learn_step."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cluster.config import RunConfig
from cluster.evaluation import mean_outcomes, protocol_outcomes
from cluster.tasks.data import Problem
from learner.records import TrainSample
from rewards import Reward, RewardSample, Scored, score_samples
from rollout.engine import ABORTED, PROMPT_TOO_LONG
from rollout.protocols import Protocol, protocol_name
from rollout.protocols.motif import MotifSpec
from rollout.records import TRUNCATED, Episode


def prompt_batch(problems: list[Problem], size: int, seed: int, index: int) -> list[Problem]:
    """Batch `index` of an endless sequence of `size` problems, reshuffled every epoch. A function of its index,
    so a resumed run draws exactly the batches the uninterrupted one would have."""
    per_epoch = len(problems) // size
    if per_epoch == 0:
        raise ValueError(f"only {len(problems)} problems, fewer than rollout.prompts_per_step={size}")
    epoch, position = divmod(index, per_epoch)
    order = list(problems)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[position * size : (position + 1) * size]


def reward_samples(episodes: list[Episode], batch: list[Problem], protocol: Protocol,
                   spec: MotifSpec) -> list[RewardSample]:
    """What the rewards see of each episode: the protocol says which turn is the response, which the finals."""
    return [
        RewardSample(
            question=batch[e.prompt_index].question,
            gold=batch[e.prompt_index].gold,
            response=protocol.response(e).completion.text,
            finals=tuple(t.completion.text for t in protocol.finals(e)),
            response_format=protocol.response_format(spec),
            response_tokens=len(protocol.response(e).completion.completion_ids),
            final_tokens=tuple(len(t.completion.completion_ids) for t in protocol.finals(e)),
        )
        for e in episodes
    ]


def attested(episodes: list[Episode], digest: str, continuation_digest: str) -> tuple[list[Episode], Counter]:
    """The episodes a step trains on: the root finished under the adapter just pushed (`digest`), and of its
    continuation chains only those whose every turn finished under the expected policy (`continuation_digest`:
    the same adapter, or "" for the frozen base model). A failed or stale continuation says nothing about its
    root, so it leaves the reward instead of counting as a wrong answer; an episode left with no chain is
    dropped."""
    kept, counts = [], Counter()
    for e in episodes:
        if e.root.completion.finish_reason == ABORTED:
            counts["failed"] += 1
            continue
        if e.root.completion.adapter_digest != digest:
            counts["stale"] += 1
            continue
        chains = e.chains()
        if chains:
            good = [i for i, chain in enumerate(chains)
                    if all(t.completion.finish_reason != ABORTED and t.completion.adapter_digest == continuation_digest
                           for t in chain)]
            counts["dropped_continuations"] += len(chains) - len(good)
            if not good:
                counts["failed"] += 1
                continue
            if len(good) < len(chains):
                e = e.keeping_chains(good)
        kept.append(e)
    return kept, counts


def rollout_stats(episodes: list[Episode]) -> dict:
    roots = [e.root.completion for e in episodes]
    finals = [chain[-1].completion for e in episodes for chain in e.chains()]
    counted = sorted({key for e in episodes for key in e.stats})
    return {
        "response_length": sum(len(c.completion_ids) for c in roots) / len(roots),
        "truncated_rate": sum(c.finish_reason == TRUNCATED for c in roots) / len(roots),
        "prompts_too_long": sum(c.finish_reason == PROMPT_TOO_LONG for c in roots + finals),
        "continuations": len(finals),
        **{f"rollout/{key}": sum(e.stats.get(key, 0) for e in episodes) for key in counted},
    }


def sample_record(step: int, batch: list[Problem], e: Episode, protocol: Protocol, total: float,
                  advantage: float | None, kl_penalty: float | None = None) -> dict:
    """One episode, turn by turn (role, parent, text, sampler): what was sampled, by which worker under which
    adapter, and what it earned (`reward` before the KL penalty, which learner.kl_in_reward_coef adds)."""
    root = e.root.completion
    return {
        "step": step, "prompt": e.prompt_index, "question_id": batch[e.prompt_index].row,
        "response": protocol.response(e).completion.text,
        "finals": [t.completion.text for t in protocol.finals(e)], "reward": total, "advantage": advantage,
        "worker": root.worker, "adapter_version": root.adapter_version, "adapter_digest": root.adapter_digest,
        "turns": e.to_json(), **({"kl_penalty": kl_penalty} if kl_penalty is not None else {}),
    }


def write_samples(path: Path, records: list[dict]) -> None:
    """Every episode of a step, one line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


@dataclass
class StepParts:
    """What every step of a run uses: its actors, protocol, rewards, estimator and credit."""

    config: RunConfig
    pool: object  # rollout.pool.RolloutPool
    learner: object  # learner.group.LearnerGroup
    protocol: Protocol
    spec: MotifSpec
    rewards: list[Reward]
    estimator: Callable
    credit: Callable
    scores_answers: bool  # the credit reads each final answer's score (learner.credit.SCORES_ANSWERS)
    samples_dir: Path
    colocated: bool  # engines and learner ranks share GPUs: they take turns
    problems: list[Problem] = field(default_factory=list)  # what rollout.dynamic_sampling's refills draw from


@dataclass
class StepResult:
    metrics: dict
    trained: bool
    skipped_because: str | None = None  # why nothing was trained


def rollout(parts: StepParts, batch: list[Problem], step: int, *refill) -> tuple[list[Episode], dict, Counter]:
    """The batch's episodes that a step may train on, the pool's counters, and what was dropped. `refill`
    ("refill", i) names a dynamic-sampling refill, whose seeds are its own."""
    pool, r = parts.pool, parts.config.rollout
    pool.begin("train", step, *refill)
    sampled = parts.protocol.rollout(pool.generate, [p.question for p in batch], parts.spec)
    continuation_digest = pool.digest if r.continuation_policy == "current" else ""
    episodes, dropped = attested(sampled, pool.digest, continuation_digest)
    return episodes, pool.take_counters(), dropped


def score(parts: StepParts, batch: list[Problem], episodes: list[Episode]) -> Scored:
    """Each episode's reward, and each answer's score where the credit reads it (each answer scored once)."""
    answers_scored = parts.scores_answers and any(e.chains() for e in episodes)
    return score_samples(parts.rewards, reward_samples(episodes, batch, parts.protocol, parts.spec),
                         final_format=parts.protocol.final_format(parts.spec) if answers_scored else None)


def figures(parts: StepParts, batch: list[Problem], episodes: list[Episode], scored: Scored) -> dict:
    """The rewards', the rollout's and the protocol's figures of a batch."""
    r = parts.config.rollout
    outcomes = protocol_outcomes(parts.protocol, episodes, [batch[e.prompt_index].gold for e in episodes])
    return {**scored.metrics, **rollout_stats(episodes), **mean_outcomes(protocol_name(r.protocol, r.rounds), outcomes)}


def credit(parts: StepParts, episodes: list[Episode], totals: list[float],
           finals: list[list[float | None]] | None) -> tuple[list[float], list[TrainSample], dict]:
    """Advantages within each prompt's group, the samples to train, and the credit's counts (credit/<key>)."""
    norm_by_std = parts.config.learner.norm_adv_by_std
    advantages = parts.estimator(totals, [e.prompt_index for e in episodes], norm_by_std=norm_by_std).tolist()
    # One-turn episodes (a single round) have no answer turns below the root to score.
    finals = finals if finals is not None else [[] for _ in episodes]
    counts: dict = {}
    samples = parts.credit(episodes, advantages, rewards=totals, counts=counts, estimator=parts.estimator,
                           norm_by_std=norm_by_std, **({"final_scores": finals} if parts.scores_answers else {}))
    return advantages, samples, {f"credit/{key}": float(value) for key, value in counts.items()}


def loss_samples(parts: StepParts, samples: list[TrainSample]) -> list[TrainSample]:
    """The samples the loss sees: under learner.mask_truncated, not the turns that hit rollout.max_tokens (DAPO's
    overlong filtering; their episodes still count in their groups' advantages)."""
    return [s for s in samples if not s.truncated] if parts.config.learner.mask_truncated else samples


def kl_in_reward(parts: StepParts, episodes: list[Episode], totals: list[float],
                 finals: list[list[float | None]] | None) -> tuple[list[float], list[float] | None]:
    """The rewards the advantages are taken from, and the KL penalties (None: learner.kl_in_reward_coef is 0).
    Each episode's reward less coef times the summed KL estimate (learner.kl_estimator) between the policy that
    sampled it and the reference (the adapter disabled) over the tokens the step trains of it: a learner pass
    with and without the adapter before the group normalisation (verl's use_kl_in_reward)."""
    coef = parts.config.learner.kl_in_reward_coef
    if not coef:
        return totals, None
    # Which turns a credit trains does not depend on their advantages: zeros pick them out.
    samples = loss_samples(parts, credit(parts, episodes, [0.0] * len(episodes), finals)[1])
    sums = [0.0] * len(episodes)
    if samples:
        if parts.colocated:
            parts.pool.sleep()  # the learner's passes need the engines' memory, as its update does
        for s, kl in zip(samples, parts.learner.sequence_kl(samples, parts.config.learner.kl_estimator)):
            sums[s.episode] += kl
    penalties = [coef * kl for kl in sums]
    return [t - p for t, p in zip(totals, penalties)], penalties


def penalty_figures(penalties: list[float] | None) -> dict:
    return {"reward/kl_penalty": sum(penalties) / len(penalties)} if penalties else {}


def score_and_credit(parts: StepParts, batch: list[Problem], episodes: list[Episode],
                     step: int) -> tuple[list[TrainSample], dict]:
    """Rewards (less the KL penalty, where learner.kl_in_reward_coef is set), advantages within each prompt's
    group, the step's samples.jsonl, and the samples to train."""
    scored = score(parts, batch, episodes)
    totals, penalties = kl_in_reward(parts, episodes, scored.totals, scored.finals)
    advantages, samples, counts = credit(parts, episodes, totals, scored.finals)
    write_samples(parts.samples_dir / f"step-{step}.jsonl",
                  [sample_record(step, batch, e, parts.protocol, total, advantage,
                                 penalties[i] if penalties else None)
                   for i, (e, total, advantage) in enumerate(zip(episodes, scored.totals, advantages))])
    return samples, {**figures(parts, batch, episodes, scored), **penalty_figures(penalties), **counts}


@dataclass
class Sampled:
    """One batch of a dynamically sampled step, scored, with the prompts whose group carries a signal."""

    batch: list[Problem]
    episodes: list[Episode]
    scored: Scored
    signal: list[int]


def with_signal(episodes: list[Episode], scored: Scored) -> list[int]:
    """The prompts whose group's rewards differ, or where the credit trains the answer turns by their scores
    (every_round), one of whose episodes' answers scored differently: the rest would be trained with advantage 0
    throughout. A prompt whose every episode failed has no group."""
    rewards, answers = {}, set()
    for i, e in enumerate(episodes):
        rewards.setdefault(e.prompt_index, set()).add(scored.totals[i])
        if scored.finals is not None and len({s for s in scored.finals[i] if s is not None}) > 1:
            answers.add(e.prompt_index)
    return [g for g in sorted(rewards) if len(rewards[g]) > 1 or g in answers]


def scored_batch(parts: StepParts, batch: list[Problem], episodes: list[Episode]) -> Sampled:
    scored = score(parts, batch, episodes) if episodes else Scored([], {})
    return Sampled(batch, episodes, scored, with_signal(episodes, scored))


def refill_batch(problems: list[Problem], taken: set[Problem], size: int, seed: int, step: int,
                 i: int) -> list[Problem]:
    """Refill `i` of `step`: up to `size` problems the step has not sampled yet, drawn by a stream of its own
    (the data seed, the step and i), so a resume draws what the uninterrupted run did and the steps' own
    batches (prompt_batch) are where they were."""
    fresh = [p for p in problems if p not in taken]
    return random.Random(f"{seed}:refill:{step}:{i}").sample(fresh, min(size, len(fresh)))


def sample_dynamically(parts: StepParts, batch: list[Problem], episodes: list[Episode], counters: dict,
                       dropped: Counter, step: int) -> tuple[list[TrainSample], dict]:
    """DAPO's dynamic sampling (rollout.dynamic_sampling): the groups that scored alike are dropped and batches
    of B fresh prompts sampled, at most rollout.dynamic_sampling_max_refills, until B groups with a signal are
    kept (the first B, in the order sampled); past the bound the step trains those it has. The estimator sees
    the kept groups alone. samples.jsonl holds every batch; the reward and outcome figures are the step's own
    batch's, as with the option off. `counters` and `dropped` grow by the refills'."""
    r = parts.config.rollout
    rounds = [scored_batch(parts, batch, episodes)]
    metrics = figures(parts, batch, episodes, rounds[0].scored) if episodes else {}
    taken, t0 = set(batch), time.perf_counter()
    while sum(len(s.signal) for s in rounds) < r.prompts_per_step and len(rounds) <= r.dynamic_sampling_max_refills:
        batch = refill_batch(parts.problems, taken, r.prompts_per_step, parts.config.data.shuffle_seed, step,
                             len(rounds))
        if not batch:
            break  # the step has sampled every problem
        taken.update(batch)
        episodes, more, lost = rollout(parts, batch, step, "refill", len(rounds))
        counters.update({key: counters[key] + value for key, value in more.items()})
        dropped.update(lost)
        rounds.append(scored_batch(parts, batch, episodes))
    # The kept groups, numbered as one batch: (batch index, prompt) -> prompt in the trained batch.
    kept: dict[tuple[int, int], int] = {}
    for i, s in enumerate(rounds):
        for g in s.signal[:r.prompts_per_step - len(kept)]:
            kept[i, g] = len(kept)
    trained, episodes, totals, finals = [], [], [], []
    for i, s in enumerate(rounds):
        for j, e in enumerate(s.episodes):
            if (i, e.prompt_index) in kept:
                trained.append((i, j))
                episodes.append(replace(e, prompt_index=kept[i, e.prompt_index]))
                totals.append(s.scored.totals[j])
                finals.append(s.scored.finals[j] if s.scored.finals is not None else [])
    rewards, penalties = kl_in_reward(parts, episodes, totals, finals)
    advantages, samples, counts = credit(parts, episodes, rewards, finals)
    metrics.update(counts)
    advantage = dict(zip(trained, advantages))
    penalty = dict(zip(trained, penalties)) if penalties else {}
    # Dropped episodes keep their batch's numbering, with no advantage and why they were not trained.
    write_samples(parts.samples_dir / f"step-{step}.jsonl", [
        {**sample_record(step, s.batch, e, parts.protocol, s.scored.totals[j], advantage.get((i, j)),
                         penalty.get((i, j))), "batch": i,
         "dropped": None if (i, e.prompt_index) in kept else "surplus" if e.prompt_index in s.signal else "degenerate"}
        for i, s in enumerate(rounds) for j, e in enumerate(s.episodes)])
    metrics.update({
        "rollout/degenerate_groups": float(sum(len({e.prompt_index for e in s.episodes}) - len(s.signal)
                                               for s in rounds)),
        "rollout/refill_batches": float(len(rounds) - 1), "rollout/kept_groups": float(len(kept)),
        "rollout/refill_exhausted": float(len(kept) < r.prompts_per_step),
        "time_refill": time.perf_counter() - t0, **penalty_figures(penalties),
    })
    return samples, metrics


def train_and_push(parts: StepParts, samples: list[TrainSample], version: int, push: Callable | None = None) -> dict:
    """One update, then every engine serves adapter `version` (`push(pool, learner, version)`: at once by default;
    an overlapped schedule hands it to its rollout thread). Colocated on GPUs, the engines sleep through the
    update and the learner hands its cached memory back before they wake for the push."""
    t0 = time.perf_counter()
    if parts.colocated:
        parts.pool.sleep()
    # Which episodes share a mini-batch: a function of the run's seed and the step, so a resume draws the same.
    metrics = parts.learner.train_step(samples, f"{parts.config.learner.seed}:{version}")
    if parts.colocated:
        parts.learner.release_memory()
    t1 = time.perf_counter()
    (push or push_now)(parts.pool, parts.learner, version)
    return {**metrics, "time_learn": t1 - t0, "time_sync": time.perf_counter() - t1}


def push_now(pool, learner, version: int) -> None:
    digest, payload = learner.adapter_payload(version)
    pool.push(payload, digest, version)


@dataclass
class StepRollout:
    """What a step samples before it learns: its batch's attested episodes, the pool's counters and what was
    dropped; an overlapped schedule makes these ahead of the step that trains them."""

    batch: list[Problem]
    episodes: list[Episode]
    counters: dict
    dropped: Counter
    seconds: float


def sample_step(parts: StepParts, batch: list[Problem], step: int) -> StepRollout:
    t0 = time.perf_counter()
    episodes, counters, dropped = rollout(parts, batch, step)
    return StepRollout(batch, episodes, counters, dropped, time.perf_counter() - t0)


def run_step(parts: StepParts, batch: list[Problem], step: int) -> StepResult:
    """Rollout -> score -> credit -> train -> push; the adapter trained here is served as version `step`."""
    return learn_step(parts, sample_step(parts, batch, step), step)


def learn_step(parts: StepParts, rolled: StepRollout, step: int, push: Callable | None = None) -> StepResult:
    """Score -> credit -> train -> push of a step's rollout; the adapter trained here is served as version
    `step`."""
    batch, episodes, counters, dropped = rolled.batch, rolled.episodes, rolled.counters, rolled.dropped
    t1 = time.perf_counter()
    dynamic = parts.config.rollout.dynamic_sampling
    samples, scored = [], {}
    if dynamic:
        samples, scored = sample_dynamically(parts, batch, episodes, counters, dropped, step)
    elif episodes:
        samples, scored = score_and_credit(parts, batch, episodes, step)
    t2 = time.perf_counter()
    metrics = {**counters, "rollout/stale_dropped": float(dropped["stale"]),
               "rollout/failed_samples": float(dropped["failed"]),
               "rollout/dropped_continuations": float(dropped["dropped_continuations"]),
               **scored, "time_rollout": rolled.seconds, "time_reward": t2 - t1}
    kept = loss_samples(parts, samples)
    if parts.config.learner.mask_truncated:
        metrics["rollout/masked_truncated"] = float(len(samples) - len(kept))
    if kept:
        return StepResult({**metrics, **train_and_push(parts, kept, step, push)}, trained=True)
    # Nothing to learn from (every prompt too long, every generation failed, every group scored alike, every
    # trained turn truncated, or the credit's counts say why it kept none).
    unusable = f"{dropped['failed']} failed, {dropped['stale']} stale"
    counted = ", ".join(f"{key} {value:g}" for key, value in scored.items() if key.startswith("credit/"))
    why = ("every trained turn hit rollout.max_tokens (learner.mask_truncated)" if samples else
           f"no group's rewards differed in {1 + int(scored['rollout/refill_batches'])} batches ({unusable})"
           if dynamic else f"learner.credit={parts.config.learner.credit} kept no sample ({counted})"
           if episodes and counted else f"all {len(batch)} prompts exceed rollout.max_model_len" if episodes else
           f"no usable sample ({unusable})")
    return StepResult({**metrics, "skipped_step": 1.0}, trained=False, skipped_because=why)
