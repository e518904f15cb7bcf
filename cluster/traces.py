"""`motif build-traces`: stage 1 of self-rewarding correction (arXiv 2502.19613). Sequential rejection sampling
on the worker pool, from the configured model's own samples:

1. `rollout.samples_per_prompt` first attempts per question, graded;
2. for each attempt, verdicts sampled until one agrees with the grader (a "wrong" verdict on a right attempt
   met on the way is kept too: it starts a right -> [wrong] -> right trace);
3. after each "wrong" verdict, corrections sampled until one is right, then verdicts on it until "correct".

Every search stops after `traces.max_tries` samples and is counted. The traces kept are the paper's kinds
(KINDS); each model turn becomes one SFT row (the conversation before it as the prompt, the turn as the
response), so `motif sft` trains the model's own turns only and never the instructions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.tasks.data import Problem
from rollout.protocols.self_correct import (CORRECT, CORRECT_INSTRUCTION, VERIFY_INSTRUCTION, WRONG, SelfCorrectSpec,
                                            attempt_message, parse_verdict)

KINDS = ("wrong->[wrong]->right", "right->[wrong]->right", "right->[correct]")
# Where every attempt went: graded or not, an agreeing verdict or none, a right attempt doubted on the way,
# a correction found or not, a final "correct" or not.
COUNTS = ("attempts", "ungraded", "no_agreeing_verdict", "doubted_right", "no_right_correction", "no_final_verdict")
QUESTIONS_PER_CALL = 16  # questions per progress-bar tick


@dataclass
class Trace:
    """One conversation in the making: (instruction, model text) per model turn."""

    problem: Problem
    turns: list[tuple[str, str]]
    kind: str = ""

    def conversation(self, system_prompt: str, then: str) -> list[dict[str, str]]:
        """The messages the model sees before answering `then`."""
        messages = [{"role": "system", "content": system_prompt}]
        for message, text in self.turns:
            messages += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return messages + [{"role": "user", "content": then}]

    def rows(self, system_prompt: str) -> list[dict]:
        """One SFT row per model turn: the conversation before it, and the turn."""
        return [{"prompt": Trace(self.problem, self.turns[:i]).conversation(system_prompt, message), "response": text,
                 "kind": self.kind} for i, (message, text) in enumerate(self.turns)]


Grade = Callable[[Sequence[str], Sequence[str]], list[bool | None]]


def _search(pool, key: tuple, traces: list[Trace], system: str, instruction: str, spec: SelfCorrectSpec,
            max_tries: int, accept: Callable[[list[Trace], list[str]], list[bool]]) -> list[tuple[Trace, str | None]]:
    """For each trace, samples answering `instruction` until one is accepted (at most `max_tries`): (trace,
    the accepted text or None). Every try of the still-searching traces is one batched call, judged in one
    batch by `accept(traces, texts)`."""
    found: dict[int, str] = {}
    one = dataclasses.replace(spec.first_round, n=1)
    for attempt in range(max_tries):
        open_ = [i for i in range(len(traces)) if i not in found]
        if not open_:
            break
        pool.begin(*key, attempt)
        outputs = pool.generate([traces[i].conversation(system, instruction) for i in open_], one, True)
        texts = [samples[0].text for samples in outputs]
        for i, text, ok in zip(open_, texts, accept([traces[i] for i in open_], texts)):
            if ok:
                found[i] = text
    return [(t, found.get(i)) for i, t in enumerate(traces)]


def build_traces(pool, problems: Sequence[Problem], spec: SelfCorrectSpec, max_tries: int, grade: Grade,
                 key: tuple = ("traces",)) -> tuple[list[Trace], Counter]:
    """The kept traces of `problems` and the counts: attempts, what could not be completed, each kind."""
    system = spec.system_prompt_for(spec.rounds)
    counts = Counter()
    first = dataclasses.replace(spec.first_round, n=spec.samples_per_prompt)
    pool.begin(*key, "attempts")
    outputs = pool.generate([Trace(p, []).conversation(system, attempt_message(p.question)) for p in problems],
                            first, True)
    attempts = [Trace(p, [(attempt_message(p.question), c.text)]) for p, samples in zip(problems, outputs)
                for c in samples]
    right = grade([t.turns[0][1] for t in attempts], [t.problem.gold for t in attempts])
    counts["attempts"] = len(attempts)
    counts["ungraded"] = sum(r is None for r in right)
    graded = [(t, r) for t, r in zip(attempts, right) if r is not None]
    is_right = {id(t): r for t, r in graded}

    # Verdicts until one agrees with the grader; a "wrong" on a right attempt seen first is kept too.
    doubted: dict[int, str] = {}

    def agrees(traces: list[Trace], texts: list[str]) -> list[bool]:
        verdicts = [parse_verdict(text) for text in texts]
        for trace, text, verdict in zip(traces, texts, verdicts):
            if is_right[id(trace)] and verdict == WRONG:
                doubted.setdefault(id(trace), text)
        return [v == (CORRECT if is_right[id(t)] else WRONG) for t, v in zip(traces, verdicts)]

    judged = _search(pool, (*key, "verdicts"), [t for t, _ in graded], system, VERIFY_INSTRUCTION, spec, max_tries,
                     agrees)
    counts["no_agreeing_verdict"] = sum(v is None for _, v in judged)
    counts["doubted_right"] = len(doubted)
    kept, to_correct = [], []
    for trace, verdict in judged:
        if is_right[id(trace)]:
            if verdict is not None:
                kept.append(Trace(trace.problem, [*trace.turns, (VERIFY_INSTRUCTION, verdict)], "right->[correct]"))
            if id(trace) in doubted:
                to_correct.append(Trace(trace.problem, [*trace.turns, (VERIFY_INSTRUCTION, doubted[id(trace)])],
                                        "right->[wrong]->right"))
        elif verdict is not None:
            to_correct.append(Trace(trace.problem, [*trace.turns, (VERIFY_INSTRUCTION, verdict)], "wrong->[wrong]->right"))

    # Corrections until one is right (graded as they come), then a "correct" verdict on it.
    def right_answers(traces: list[Trace], texts: list[str]) -> list[bool]:
        return [r is True for r in grade(texts, [t.problem.gold for t in traces])]

    corrected = _search(pool, (*key, "corrections"), to_correct, system, CORRECT_INSTRUCTION, spec, max_tries,
                        right_answers)
    counts["no_right_correction"] = sum(c is None for _, c in corrected)
    ending = [Trace(t.problem, [*t.turns, (CORRECT_INSTRUCTION, c)], t.kind) for t, c in corrected if c is not None]
    closed = _search(pool, (*key, "final verdicts"), ending, system, VERIFY_INSTRUCTION, spec, max_tries,
                     lambda traces, texts: [parse_verdict(text) == CORRECT for text in texts])
    counts["no_final_verdict"] = sum(v is None for _, v in closed)
    kept += [Trace(t.problem, [*t.turns, (VERIFY_INSTRUCTION, v)], t.kind) for t, v in closed if v is not None]
    counts.update(t.kind for t in kept)
    return kept, counts


def traces_path(config: RunConfig) -> Path:
    return Path(config.traces.path or Path(config.output_dir) / "traces.jsonl").expanduser().resolve()


def run_build_traces(config: RunConfig) -> dict:
    """`motif build-traces`: writes the SFT rows (traces.path) and, beside them, a summary of the mix."""
    from cluster.console import quiet_driver
    from cluster.models import resolve_model
    from cluster.spec import rollout_spec
    from cluster.tasks.data import load_problems
    from cluster.workers import start_ray, start_rollout_pool
    from rewards import grade_batch
    from rewards.grading import correctness

    out = traces_path(config)
    log_dir = None if config.cluster.show_logs else out.parent / "logs"
    if log_dir is not None:
        quiet_driver(log_dir)
    problems, report = load_problems(config.data)
    tqdm.write(f"data: {report.summary()}")
    spec = rollout_spec(config, [])
    system = spec.system_prompt_for(spec.rounds)
    start_ray(config, log_dir)
    pool = start_rollout_pool(config, resolve_model(config.model, config.data.toy))
    kept, counts = [], Counter()
    try:
        pool.wait_ready(config.cluster.ready_timeout_s)
        progress = tqdm(range(0, len(problems), QUESTIONS_PER_CALL), desc="build-traces", unit="batch")
        for start in progress:
            traces, found = build_traces(pool, problems[start : start + QUESTIONS_PER_CALL], spec,
                                         config.traces.max_tries,
                                         lambda texts, golds: correctness(grade_batch(texts, golds)),
                                         key=("traces", start))
            kept += traces
            counts += found
            progress.set_postfix({kind: counts[kind] for kind in KINDS})
    finally:
        pool.shutdown()
    rows = [row for trace in kept for row in trace.rows(system)]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = out.with_name(out.name + ".partial")  # renamed when whole: a stopped build leaves no half file
    written.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(written, out)
    summary = {"questions": len(problems), "traces": len(kept), "rows": len(rows),
               "mix": {kind: counts[kind] for kind in KINDS},
               **{k: counts[k] for k in COUNTS}}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tqdm.write("traces: " + ", ".join(f"{k} {v}" for k, v in summary["mix"].items())
               + f" | not completed: {summary['no_agreeing_verdict']} verdicts, {summary['no_right_correction']} "
               f"corrections, {summary['no_final_verdict']} final verdicts | {len(rows)} SFT rows: {out}")
    return summary
