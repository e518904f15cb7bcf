"""Rewards by name: the config lists components with weights; each scores a batch, one float per sample.

Built in: `format` (the tag structure the protocol asks for), `accuracy` (bounded math grading of the final
answers), `reward_model` (a sequence-classification reward model in a Ray actor, RLMT), `overlong` (DAPO's soft
overlong punishment of the response's length in tokens). A user's own reward is
named `path/to/file.py:function`: `function(sample: RewardSample) -> float`, run in a bounded worker process,
so one that raises, hangs or returns junk costs that sample's component (scored 0, counted), not the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rewards.bounded import BoundedPool, process_wide
from rewards.format import FORMATS
from rewards.motif import future_accuracies, mean_per_group
from rollout.common import registrar

log = logging.getLogger(__name__)

USER_REWARD_TIMEOUT_S = 5.0  # per sample
REWARD_MODEL_TIMEOUT_S = 600.0  # per batch
REWARD_MODEL_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RewardSample:
    """What a reward sees of one trained response."""

    question: str
    gold: str | None
    response: str  # the response being trained (MOTIF: the round-1 text)
    finals: tuple[str, ...]  # the texts that end in a final answer (MOTIF: the k last rounds; else (response,))
    response_format: str  # the FORMATS entry the response should follow
    response_tokens: int | None = None  # the response's length in tokens, as trained (None: not known)
    final_tokens: tuple[int, ...] | None = None  # each of `finals`' length in tokens (None: not known)


@dataclass(frozen=True)
class RewardTerm:
    """One configured component: `{name, weight}`, plus `model` for `reward_model`."""

    name: str
    weight: float = 1.0
    description: str | None = None  # replaces the built-in description or the user function's docstring
    timeout_s: float | None = None  # user function: per sample (5 s); reward_model: per batch (600 s)
    model: str | None = None  # reward_model: a hub id or local folder
    batch_size: int = 16  # reward_model
    max_length: int = 1024  # reward_model: tokens of (prompt, answer) kept, from the end
    num_cpus: float = 1  # reward_model actor
    num_gpus: float = 0  # reward_model actor; on a GPU it runs in bfloat16
    # reward_model: a sample whose response fails its format is not sent to the model and gets the null score,
    # the lowest score of the batch's well-formed answers (0 when there is none)
    strict: bool = False
    # overlong: the length in tokens where the penalty reaches -1 (None: rollout.max_tokens), and the tokens
    # before it over which it falls from 0 (None: a fifth of the limit, DAPO's 4096 of 20480)
    overlong_limit: int | None = None
    overlong_buffer: int | None = None


@dataclass
class RewardScores:
    values: list[float]
    counts: Counter = field(default_factory=Counter)  # outcomes by reason, logged as reward/<name>/<reason>
    # Each final answer's own score, per sample (None: it could not be scored), from a reward that scores the
    # answers to make `values` (accuracy, reward_model): the answer turns' scores then come from here, not
    # from scoring again.
    per_final: list[list[float | None]] | None = None


@dataclass
class Reward:
    name: str  # the metric key: registry name, or the user function's name
    weight: float
    description: str  # one sentence of what earns the reward; the motivation text is made of these
    score: Callable[[Sequence[RewardSample]], RewardScores]
    close: Callable[[], None] = lambda: None
    # What earns the reward in a round whose response follows another format (MOTIF's last round answers
    # instead of writing progress); None: `description` holds for every round.
    describe_for: Callable[[str], str] | None = None
    # What would earn the opposite reward, for the misleading motivation (MeRF's ablation); None: derived from
    # the description by `opposite_of`.
    opposite: str | None = None

    def description_for(self, response_format: str | None) -> str:
        if response_format is None or self.describe_for is None:
            return self.description
        return self.describe_for(response_format)

    def opposite_for(self, response_format: str | None) -> str:
        return self.opposite or opposite_of(self.description_for(response_format))


def opposite_of(description: str) -> str:
    """A description turned into its opposite: a 1-or-0 rule ("1 if ..., else 0.") swaps its values; any other
    (a user's function, a configured description) is told as the negative of its score."""
    rule = re.fullmatch(r"1 if (.*), else 0\.", description, re.DOTALL)
    return f"0 if {rule[1]}, else 1." if rule else f"the negative of this score: {description}"


RewardFactory = Callable[[RewardTerm, str], Reward]
REWARDS: dict[str, RewardFactory] = {}


register_reward = registrar(REWARDS)


@register_reward("format")
def _format(term: RewardTerm, response_format: str) -> Reward:
    def describe(fmt: str) -> str:
        return term.description or FORMATS[fmt].description

    return Reward(
        "format", term.weight, describe(response_format),
        lambda samples: RewardScores([FORMATS[s.response_format](s.response) for s in samples]),
        describe_for=describe,
    )


@register_reward("accuracy")
def _accuracy(term: RewardTerm, response_format: str) -> Reward:
    def score(samples: Sequence[RewardSample]) -> RewardScores:
        if any(s.gold is None for s in samples):
            raise ValueError("accuracy needs a gold answer for every sample")
        return RewardScores(*future_accuracies([s.finals for s in samples], [s.gold for s in samples]))

    return Reward(
        "accuracy", term.weight,
        term.description or "the share of the final answers reached from the response whose last \\boxed{} "
        "value equals the reference answer mathematically, from 0 to 1.",
        score,
        opposite=None if term.description else "the share of the final answers reached from the response whose "
        "last \\boxed{} value does not equal the reference answer mathematically, from 0 to 1.",
    )


@register_reward("reward_model")
def _reward_model(term: RewardTerm, response_format: str) -> Reward:
    import ray

    from rewards.format import strip_thinking
    from rewards.reward_model import RewardModelWorker
    from rollout.common import WorkerStartFailed, failure_cause

    def start():
        worker = RewardModelWorker.options(num_cpus=term.num_cpus, num_gpus=term.num_gpus).remote(
            term.model, batch_size=term.batch_size, max_length=term.max_length
        )
        try:
            # Fails here, not at the first step, when the model cannot load or the cluster cannot place the actor.
            ray.get(worker.__ray_ready__.remote(), timeout=REWARD_MODEL_START_TIMEOUT_S)
        except ray.exceptions.RayActorError as e:
            raise WorkerStartFailed(f"reward model actor for {term.model} failed to start: {failure_cause(e)}") from None
        except ray.exceptions.GetTimeoutError:
            ray.kill(worker)
            raise RuntimeError(
                f"reward model actor for {term.model} did not start within {REWARD_MODEL_START_TIMEOUT_S:.0f} s: "
                f"the cluster cannot place num_cpus={term.num_cpus}, num_gpus={term.num_gpus} "
                f"(available: {ray.available_resources()})"
            ) from None
        return worker

    actor = [start()]

    def request(questions: list[str], answers: list[str], counts: Counter) -> list[float]:
        """One batched call; a dead or hung actor is replaced and the batch sent again once, a second failure
        fails the batch."""
        for attempt in range(2):
            try:
                return ray.get(actor[0].score.remote(questions, answers), timeout=term.timeout_s or REWARD_MODEL_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if attempt:
                    raise
                ray.kill(actor[0], no_restart=True)
                actor[0] = start()
                counts["actor_restarts"] += 1

    def score(samples: Sequence[RewardSample]) -> RewardScores:
        """Every final answer in one request, its thinking cut out here: the model never receives it."""
        counts = Counter()
        malformed = [term.strict and not FORMATS[s.response_format](s.response) for s in samples]
        sent = [(s.question, strip_thinking(f)) for s, bad in zip(samples, malformed) if not bad for f in s.finals]
        values = iter(request([q for q, _ in sent], [a for _, a in sent], counts) if sent else [])
        scored = [None if bad else [next(values) for _ in s.finals] for s, bad in zip(samples, malformed)]
        if any(malformed):
            null = min((v for per in scored if per for v in per), default=0.0)
            scored = [[null] * len(s.finals) if per is None else per for s, per in zip(samples, scored)]
            counts["malformed"] = sum(malformed)
        return RewardScores(mean_per_group([v for per in scored for v in per], [s.finals for s in samples]),
                            counts, scored)

    return Reward(
        "reward_model", term.weight,
        term.description or "a learned reward model's score of the final answer for the question, judged "
        "without the reasoning; higher is better.",
        score, close=lambda: ray.kill(actor[0]),
        opposite=None if term.description else "a learned reward model's score of the final answer for the "
        "question, judged without the reasoning; lower is better.",
    )


def overlong_window(term: RewardTerm, max_tokens: int | None) -> tuple[int, int]:
    """overlong's (limit, buffer) in tokens: the term's, else the limit is `max_tokens` (the rollout's) and the
    buffer a fifth of the limit (DAPO's 4096 of 20480)."""
    limit = max_tokens if term.overlong_limit is None else term.overlong_limit
    if limit is None:
        raise ValueError("reward 'overlong': set overlong_limit, the length in tokens where the penalty reaches -1")
    buffer = max(1, round(limit / 5)) if term.overlong_buffer is None else term.overlong_buffer
    if limit < 1 or not 0 <= buffer <= limit:
        raise ValueError(f"reward 'overlong': overlong_limit must be >= 1 and overlong_buffer in 0..overlong_limit, "
                         f"got {limit} and {buffer}")
    return limit, buffer


def overlong_penalty(tokens: int, limit: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13): 0 up to limit - buffer tokens, then falling
    linearly to -1 at `limit`, and -1 beyond it."""
    if tokens > limit:
        return -1.0
    return min(0.0, (limit - buffer - tokens) / buffer) if buffer else 0.0


@register_reward("overlong")
def _overlong(term: RewardTerm, response_format: str) -> Reward:
    limit, buffer = overlong_window(term, None)  # build_rewards fills an unset limit with the rollout's

    def score(samples: Sequence[RewardSample]) -> RewardScores:
        if any(s.response_tokens is None for s in samples):
            raise ValueError("overlong needs each response's length in tokens (RewardSample.response_tokens)")
        return RewardScores([overlong_penalty(s.response_tokens, limit, buffer) for s in samples])

    return Reward(
        "overlong", term.weight,
        term.description or f"0 for a response of at most {limit - buffer} tokens, falling linearly to -1 at "
        f"{limit} tokens and beyond.",
        score,
        opposite=None if term.description else f"0 for a response of at most {limit - buffer} tokens, rising "
        f"linearly to 1 at {limit} tokens and beyond.",
    )


def _load_module(path: str):
    """Import a user's reward file by path (once per process), under a name derived from that path."""
    resolved = Path(path).resolve()
    module_name = "motif_user_reward_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


def load_user_function(name: str) -> Callable:
    """`path/to/file.py:function` -> the function, with errors that name the file and function."""
    path, _, function = name.rpartition(":")
    if not path.endswith(".py") or not function.isidentifier():
        raise ValueError(f"reward {name!r}: a user reward is written path/to/file.py:function")
    if not Path(path).is_file():
        raise ValueError(f"reward {name!r}: file {path} not found")
    try:
        module = _load_module(path)
    except Exception as e:
        raise ValueError(f"reward {name!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {path} has no function {function}")
    return fn


def _call_user_reward(path: str, function: str, sample: RewardSample) -> float:
    value = getattr(_load_module(path), function)(sample)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"returned {value!r}, not a finite number")
    return float(value)


_user_reward_pool = process_wide(BoundedPool)


def _user_description(term: RewardTerm, fn: Callable) -> str:
    description = term.description or (fn.__doc__ or "").strip().split("\n")[0]
    if not description:
        raise ValueError(f"reward {term.name!r}: give it a description (or a docstring): the motivation text "
                         "and the logs need one sentence of what it rewards")
    return description


def _user_reward(term: RewardTerm) -> Reward:
    fn = load_user_function(term.name)
    path, _, function = term.name.rpartition(":")

    def score(samples: Sequence[RewardSample]) -> RewardScores:
        outcomes = _user_reward_pool().map(
            _call_user_reward, [(path, function, s) for s in samples], term.timeout_s or USER_REWARD_TIMEOUT_S
        )
        failed = [o for o in outcomes if o.failure]
        if failed:
            log.warning("reward %s: %d of %d samples scored 0 (%s%s)", function, len(failed), len(samples),
                        failed[0].failure, f": {failed[0].message}" if failed[0].message else "")
        return RewardScores([0.0 if o.failure else o.value for o in outcomes],
                            Counter(o.failure or "ok" for o in outcomes))

    return Reward(function, term.weight, _user_description(term, fn), score)


def check_terms(terms: Sequence[RewardTerm]) -> None:
    """Config-time checks (no actors started): known names, unique metric keys, what each kind needs."""
    if not terms:
        raise ValueError("reward.components is empty: configure at least one reward")
    seen = set()
    for term in terms:
        if term.name in REWARDS:
            key = term.name
        elif ":" in term.name:
            _user_description(term, load_user_function(term.name))
            key = term.name.rpartition(":")[2]
        else:
            raise ValueError(f"unknown reward {term.name!r} (known: {', '.join(sorted(REWARDS))}, "
                             "or path/to/file.py:function)")
        if key in seen:
            raise ValueError(f"reward {key!r} is configured twice")
        seen.add(key)
        if (term.name == "reward_model") != (term.model is not None):
            raise ValueError(f"reward {term.name!r}: `model` is required for reward_model and only for it")
        if term.strict and term.name != "reward_model":
            raise ValueError(f"reward {term.name!r}: strict is a setting of reward_model")
        if term.name != "overlong" and (term.overlong_limit, term.overlong_buffer) != (None, None):
            raise ValueError(f"reward {term.name!r}: overlong_limit and overlong_buffer are settings of overlong")
        if term.timeout_s is not None and term.timeout_s <= 0:
            raise ValueError(f"reward {term.name!r}: timeout_s must be > 0")
        if min(term.batch_size, term.max_length) < 1:
            raise ValueError(f"reward {term.name!r}: batch_size and max_length must be >= 1")
        if not math.isfinite(term.weight):
            raise ValueError(f"reward {term.name!r}: weight must be a finite number")


def build_rewards(terms: Sequence[RewardTerm], response_format: str, max_tokens: int | None = None) -> list[Reward]:
    """The configured components, ready to score; reward models start their Ray actors here. `max_tokens` (the
    rollout's, per round) is the length limit of an `overlong` that sets none."""
    if response_format not in FORMATS:
        raise ValueError(f"unknown response format {response_format!r} (known: {', '.join(FORMATS)})")
    check_terms(terms)
    terms = [dataclasses.replace(t, overlong_limit=max_tokens) if t.name == "overlong" and t.overlong_limit is None
             else t for t in terms]
    return [
        REWARDS[t.name](t, response_format) if t.name in REWARDS else _user_reward(t)
        for t in terms
    ]


@dataclass
class Scored:
    totals: list[float]  # each sample's weighted reward
    metrics: dict[str, float]
    # Each final answer's weighted score from the same components, per sample (None: a component could not
    # score it), when asked for: what credit assigns to the answer turns.
    finals: list[list[float | None]] | None = None


def _score(reward: Reward, samples: Sequence[RewardSample]) -> RewardScores:
    """A component's scores; one that fails on the whole batch (a reward model actor that died, a timeout) is
    scored 0 for that batch, counted and logged: the run goes on."""
    n = len(samples)
    try:
        scores = reward.score(samples)
        if len(scores.values) != n:
            raise ValueError(f"returned {len(scores.values)} values for {n} samples")
        return scores
    except Exception as e:  # noqa: BLE001 - one component's failure must not end the run
        log.warning("reward %s failed on this batch, scored 0: %s: %s", reward.name, type(e).__name__, e)
        return RewardScores([0.0] * n, Counter(batch_failed=n))


def _final_scores(reward: Reward, scores: RewardScores, samples: Sequence[RewardSample],
                  final_format: str) -> list[list[float | None]]:
    """Each final answer's score from one component: the per-answer scores it already made, or, for a reward
    of a whole response (format, a user's function), that reward of each answer turn as a response of its own."""
    if scores.per_final is not None:
        return scores.per_final
    turns = [RewardSample(s.question, s.gold, f, (f,), final_format, n, None if n is None else (n,))
             for s in samples for f, n in zip(s.finals, s.final_tokens or [None] * len(s.finals))]
    turn_scores = _score(reward, turns)
    failed = turn_scores.counts.get("batch_failed", 0) > 0
    flat = iter(None if failed else v for v in turn_scores.values)
    return [[next(flat) for _ in s.finals] for s in samples]


def score_samples(rewards: Sequence[Reward], samples: Sequence[RewardSample],
                  final_format: str | None = None) -> Scored:
    """Weighted sum per sample, and metrics per component: mean value and outcome counts. With `final_format`
    (the FORMATS entry of an answer turn), also each final answer's weighted score, every answer scored once."""
    n = len(samples)
    totals = [0.0] * n
    finals = [[0.0] * len(s.finals) for s in samples] if final_format else None
    metrics: dict[str, float] = {}
    for reward in rewards:
        scores = _score(reward, samples)
        metrics[f"reward/{reward.name}"] = sum(scores.values) / n
        metrics.update({f"reward/{reward.name}/{reason}": float(c) for reason, c in sorted(scores.counts.items())})
        totals = [t + reward.weight * v for t, v in zip(totals, scores.values)]
        if finals is not None:
            finals = [[None if a is None or b is None else a + reward.weight * b for a, b in zip(mine, theirs)]
                      for mine, theirs in zip(finals, _final_scores(reward, scores, samples, final_format))]
    metrics["reward"] = sum(totals) / n
    if finals is not None:
        metrics["reward/unscored_finals"] = float(sum(s is None for per_sample in finals for s in per_sample))
    return Scored(totals, metrics, finals)
