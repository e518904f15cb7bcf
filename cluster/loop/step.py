"""One training step, as a short sequence of calls: rollout -> score -> credit -> train -> push. It knows nothing
of when it runs: evaluation, checkpoints and what to do after a step with nothing to learn from belong to the
schedule (cluster/loop/sync.py); an asynchronous schedule reuses these parts."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.config import RunConfig
from cluster.tasks.data import Problem
from learner.records import TrainSample
from rewards import Reward, RewardSample, score_samples
from rollout.engine import ABORTED, PROMPT_TOO_LONG
from rollout.protocols import MotifSpec, motif_response_format
from rollout.records import MotifTrajectory


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


def reward_samples(trajectories: list[MotifTrajectory], batch: list[Problem], spec: MotifSpec) -> list[RewardSample]:
    return [
        RewardSample(
            question=batch[t.prompt_index].question,
            gold=batch[t.prompt_index].gold,
            response=t.first.text,
            finals=tuple(t.final_texts()),
            response_format=spec.response_format,
        )
        for t in trajectories
    ]


def attested(trajectories: list[MotifTrajectory], digest: str, continuation_digest: str) -> tuple[list[MotifTrajectory], Counter]:
    """The trajectories a step trains on: round 1 finished under the adapter just pushed (`digest`), and of its
    continuation chains only those whose every round finished under the expected policy (`continuation_digest`:
    the same adapter, or "" for the frozen base model). A failed or stale continuation says nothing about its
    round-1 sample, so it leaves the reward instead of counting as a wrong answer; a sample left with no chain
    is dropped."""
    kept, counts = [], Counter()
    for t in trajectories:
        if t.first.finish_reason == ABORTED:
            counts["failed"] += 1
            continue
        if t.first.adapter_digest != digest:
            counts["stale"] += 1
            continue
        if t.chains:
            good = [i for i, chain in enumerate(t.chains)
                    if all(c.finish_reason != ABORTED and c.adapter_digest == continuation_digest for c in chain)]
            counts["dropped_continuations"] += len(t.chains) - len(good)
            if not good:
                counts["failed"] += 1
                continue
            t = dataclasses.replace(t, chains=[t.chains[i] for i in good],
                                    round_prompts=[t.round_prompts[i] for i in good])
        kept.append(t)
    return kept, counts


def rollout_stats(trajectories: list[MotifTrajectory]) -> dict:
    firsts = [t.first for t in trajectories]
    finals = [c for t in trajectories for chain in t.chains for c in chain[-1:]]
    return {
        "response_length": sum(len(c.completion_ids) for c in firsts) / len(firsts),
        "truncated_rate": sum(c.finish_reason == "length" for c in firsts) / len(firsts),
        "prompts_too_long": sum(c.finish_reason == PROMPT_TOO_LONG for c in firsts + finals),
        "continuations": len(finals),
        "rollout/missing_progress": sum(t.missing_progress for t in trajectories),
    }


def write_samples(path: Path, step: int, batch: list[Problem], trajectories: list[MotifTrajectory],
                  totals: list[float], advantages: list[float]) -> None:
    """Every trajectory of a step: what was sampled, by which worker under which adapter, and what it earned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for t, total, advantage in zip(trajectories, totals, advantages):
            f.write(json.dumps({
                "step": step, "prompt": t.prompt_index, "question_id": batch[t.prompt_index].row,
                "response": t.first.text, "finals": t.final_texts(), "reward": total, "advantage": advantage,
                "worker": t.first.worker, "adapter_version": t.first.adapter_version,
                "adapter_digest": t.first.adapter_digest,
            }) + "\n")

# The FORMATS entry of a turn that ends in the final answer (MOTIF's last round).
FINAL_FORMAT = motif_response_format(1)


@dataclass
class StepParts:
    """What every step of a run uses: its actors, protocol, rewards, estimator and credit."""

    config: RunConfig
    pool: object  # rollout.pool.RolloutPool
    learner: object  # learner.group.LearnerGroup
    spec: MotifSpec
    rewards: list[Reward]
    estimator: Callable
    credit: Callable
    scores_answers: bool  # the credit reads each final answer's score (learner.credit.SCORES_ANSWERS)
    samples_dir: Path
    colocated: bool  # engines and learner ranks share GPUs: they take turns


@dataclass
class StepResult:
    metrics: dict
    trained: bool
    skipped_because: str | None = None  # why nothing was trained


def rollout(parts: StepParts, batch: list[Problem], step: int) -> tuple[list[MotifTrajectory], dict, Counter]:
    """The batch's episodes that a step may train on, the pool's counters, and what was dropped."""
    pool, r = parts.pool, parts.config.rollout
    pool.begin("train", step)
    sampled = pool.motif_rollout([p.question for p in batch], parts.spec)
    continuation_digest = pool.digest if r.continuation_policy == "current" else ""
    trajectories, dropped = attested(sampled, pool.digest, continuation_digest)
    return trajectories, pool.take_counters(), dropped


def score_and_credit(parts: StepParts, batch: list[Problem], trajectories: list[MotifTrajectory],
                     step: int) -> tuple[list[TrainSample], dict]:
    """Rewards (each answer scored once), advantages within each prompt's group, the step's samples.jsonl, and
    the samples to train."""
    cfg = parts.config
    answers_scored = parts.scores_answers and any(t.chains for t in trajectories)
    scored = score_samples(parts.rewards, reward_samples(trajectories, batch, parts.spec),
                           final_format=FINAL_FORMAT if answers_scored else None)
    advantages = parts.estimator(
        scored.totals, [t.prompt_index for t in trajectories], norm_by_std=cfg.learner.norm_adv_by_std).tolist()
    write_samples(parts.samples_dir / f"step-{step}.jsonl", step, batch, trajectories, scored.totals, advantages)
    samples = parts.credit(trajectories, advantages, estimator=parts.estimator,
                           norm_by_std=cfg.learner.norm_adv_by_std,
                           continuation_temperature=cfg.rollout.continuation_temperature,
                           **({"final_scores": scored.finals} if answers_scored else {}))
    return samples, {**scored.metrics, **rollout_stats(trajectories)}


def train_and_push(parts: StepParts, samples: list[TrainSample], version: int) -> dict:
    """One update, then every engine serves adapter `version`. Colocated on GPUs, the engines sleep through the
    update and the learner hands its cached memory back before they wake for the push."""
    t0 = time.perf_counter()
    if parts.colocated:
        parts.pool.sleep()
    metrics = parts.learner.train_step(samples)
    if parts.colocated:
        parts.learner.release_memory()
    t1 = time.perf_counter()
    push(parts.pool, parts.learner, version)
    return {**metrics, "time_learn": t1 - t0, "time_sync": time.perf_counter() - t1}


def push(pool, learner, version: int) -> None:
    digest, payload = learner.adapter_payload(version)
    pool.push(payload, digest, version)


def run_step(parts: StepParts, batch: list[Problem], step: int) -> StepResult:
    """Rollout -> score -> credit -> train -> push; the adapter trained here is served as version `step`."""
    t0 = time.perf_counter()
    trajectories, counters, dropped = rollout(parts, batch, step)
    t1 = time.perf_counter()
    metrics = {**counters, "rollout/stale_dropped": float(dropped["stale"]),
               "rollout/failed_samples": float(dropped["failed"]),
               "rollout/dropped_continuations": float(dropped["dropped_continuations"])}
    samples = []
    if trajectories:
        samples, scored = score_and_credit(parts, batch, trajectories, step)
        metrics.update(scored)
    t2 = time.perf_counter()
    metrics.update(time_rollout=t1 - t0, time_reward=t2 - t1)
    if samples:
        return StepResult({**metrics, **train_and_push(parts, samples, step)}, trained=True)
    # Nothing to learn from (every prompt too long, or every generation failed).
    why = (f"all {len(batch)} prompts exceed rollout.max_model_len" if trajectories else
           f"no usable sample ({dropped['failed']} failed, {dropped['stale']} stale)")
    return StepResult({**metrics, "skipped_step": 1.0}, trained=False, skipped_because=why)
