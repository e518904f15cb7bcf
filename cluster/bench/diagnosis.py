"""Where toy-task solutions first go wrong: first-wrong-step attribution of one multi-round solution, and
counts of those places over an evaluation's samples, to compare evaluations (before / after training).

    python -m cluster.bench.diagnosis RUN_DIR/eval/step-0 RUN_DIR/eval/step-40            # table, then JSON
    python -m cluster.bench.diagnosis OUT/eval --config my.yaml --json diagnosis.json     # a `motif eval` folder

Pure Python (no Ray, vLLM or torch): it reads samples.jsonl records (cluster/evaluation.py) and regenerates
the toy questions from the run's config (a record names its question by `question_id`, the question's index
in the toy split; each record's gold is checked against the regenerated question).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from cluster.tasks.toy_task import LETTERS, ToyConfig, ToyProblem, parse_progress, parse_question, parse_steps, toy_problems
from rollout.protocols.formats import extract_progress
from rewards.math_answers import extract_answer, parse_number

# Every kind of outcome, in the order a solution can meet them (the table's order). See `attribute`.
STEP_KINDS = ("wrong_operation", "wrong_input", "wrong_value")
ROUND_KINDS = ("wrong_progress", "missing_progress", "truncated", "no_answer", "missing_steps", "final_answer")
KINDS = ("correct",) + STEP_KINDS + ROUND_KINDS


@dataclass(frozen=True)
class Attribution:
    """The first failure of one solution (kind "correct": none)."""

    kind: str
    round: int | None = None  # 1-based round it happened in (None for "correct")
    position: int | None = None  # 1-based position among that round's written steps (step kinds, missing_steps)
    operation: int | None = None  # 0-based index of the operation due there (its letter: LETTERS[operation])
    answer_correct: bool = False  # the final answer is right (a flawed trace can still reach it)
    detail: str = ""

    @property
    def label(self) -> str:
        """"correct", "wrong_value r2 s1" (a step), "missing_progress r1" (a round)."""
        if self.round is None:
            return self.kind
        return f"{self.kind} r{self.round}" + (f" s{self.position}" if self.position is not None else "")


def _reasoning_part(text: str) -> str:
    """A round's text before its first <progress> or <answer> block: where its steps are written."""
    cuts = [i for i in (text.find("<progress>"), text.find("<answer>")) if i >= 0]
    return text[: min(cuts)] if cuts else text


def attribute(problem: ToyProblem | str, rounds: Sequence[str], truncated: bool = False,
              correct: bool | None = None) -> Attribution:
    """Where a toy-task solution, one text per round (a samples.jsonl record's "rounds"), first went wrong.

    Rounds are read in order, each step against the true chain: every well-formed step (`c-4:0=6`, see
    toy_task.parse_steps; prose and a step cut off mid-way are skipped) must be the next operation, start
    from the true value and give the true value. The first failure found is the answer:

    - `wrong_operation` (round, position): the step is not the operation due: a skipped or repeated letter,
      a misread operator or operand, or a step after the last operation;
    - `wrong_input` (round, position): the right operation applied to a wrong value (`c-4:5=1` when x was 0):
      a value miscopied, from the round's own previous step or, on a round's first step, from the note;
    - `wrong_value` (round, position): the right operation on the right value gives a wrong result;
    - `wrong_progress` (round): a round before the last ends with a note that is not the state its steps
      reached, exactly as toy_task.progress_text writes it ("after c: x=6"); before any step is done, any
      note that claims no step is accepted;
    - `missing_progress` (round): a round before the last wrote no complete <progress> block, so the next
      round started from the fixed note rollout.protocols.MISSING_PROGRESS, without the state;
    - `truncated` (round): as missing_progress / no_answer, but the sample hit its token budget (`truncated`;
      the record's flag is per sample: the first round without its closing block is taken as the cut one);
    - `no_answer` (last round): no final answer (the grader's own extraction found none);
    - `missing_steps` (last round, position of the first step not written): every step written is right but
      the solution answered before writing every operation;
    - `final_answer` (last round): every operation written and right, but the final answer is wrong;
    - `correct`: every operation written and right, every note right, and the final answer right.

    A round that writes more or fewer steps than the training traces' steps_per_round is not a failure.
    `correct` is the grader's verdict on the final answer when known (a record's "correct"); else the final
    answer is compared as a number. It is reported as `answer_correct` whatever the kind: a solution whose
    trace has a failure can still end on the right answer.
    """
    problem = parse_question(problem) if isinstance(problem, str) else problem
    values = problem.values()
    final_text = rounds[-1] if rounds else ""
    answer = extract_answer(final_text)
    if correct is None:
        correct = answer is not None and parse_number(answer) == int(problem.answer)
    done, value = 0, problem.start  # operations done right so far, and the true value after them
    for r, text in enumerate(rounds, start=1):
        written = parse_steps(_reasoning_part(text))
        for position, step in enumerate(written, start=1):
            at = dict(round=r, position=position, operation=done, answer_correct=correct)
            wrote = f"{LETTERS[step.index]}{step.op}{step.operand}:{step.before}={step.after}"
            if done >= len(problem.steps):
                return Attribution("wrong_operation", **at, detail=f"{wrote} after the last operation")
            op, operand = problem.steps[done]
            if (step.index, step.op, step.operand) != (done, op, operand):
                what = "skipped to" if step.index > done else "repeated" if step.index < done else "misread"
                return Attribution("wrong_operation", **at,
                                   detail=f"{what} {wrote}; due: {LETTERS[done]}{op}{operand}")
            if step.before != value:
                return Attribution("wrong_input", **at, detail=f"{wrote}: x was {value}")
            if step.after != values[done]:
                return Attribution("wrong_value", **at, detail=f"{wrote}: {value}{op}{operand} is {values[done]}")
            done, value = done + 1, values[done]
        if r == len(rounds):
            break
        note = extract_progress(text)
        if note is None:
            kind = "truncated" if truncated else "missing_progress"
            return Attribution(kind, round=r, answer_correct=correct, detail="no complete <progress> block")
        state = parse_progress(note)
        expected = (done - 1, value) if done else None
        if state != expected:
            reached = f"after {LETTERS[done - 1]}: x={value}" if done else "no step yet"
            return Attribution("wrong_progress", round=r, answer_correct=correct,
                               detail=f"note {note[:60]!r}; the steps reached {reached}")
    last = max(len(rounds), 1)
    if answer is None:
        kind = "truncated" if truncated else "no_answer"
        return Attribution(kind, round=last, answer_correct=correct, detail="no final answer")
    if done < len(problem.steps):
        written_last = len(parse_steps(_reasoning_part(final_text)))
        return Attribution("missing_steps", round=last, position=written_last + 1, operation=done,
                           answer_correct=correct,
                           detail=f"answered {answer!r} after {done} of {len(problem.steps)} operations")
    if not correct:
        return Attribution("final_answer", round=last, answer_correct=False,
                           detail=f"answered {answer!r}; the steps reached {value}")
    return Attribution("correct", answer_correct=True)


def attribute_record(record: dict, problem: ToyProblem) -> Attribution:
    """`attribute` on one samples.jsonl record, with its truncation flag and the grader's verdict."""
    return attribute(problem, record["rounds"], truncated=bool(record.get("truncated")), correct=record.get("correct"))


def _location_order(label: str) -> tuple:
    kind, *rest = label.split(" ")
    numbers = tuple(int(part[1:]) for part in rest)
    return KINDS.index(kind), numbers


def diagnose(samples: Iterable[dict], problems: Sequence[ToyProblem]) -> dict:
    """Counts of first failures over samples.jsonl records; `problems[question_id]` is each one's question.

    Like the evaluation's summary, a question with a sample whose generation failed (`failed`) is left out
    (counted in `excluded_samples`). Keys: `samples`, `answer_correct`, `right_answer_flawed_trace` (answer
    right, trace not), `kinds` (every kind, zeros included), `first_failure_round` ("r1": count),
    `locations` (Attribution.label: count, in table order)."""
    samples = list(samples)
    lost = {s["question_id"] for s in samples if s.get("failed")}
    kept = [s for s in samples if s["question_id"] not in lost]
    kinds, rounds, locations = Counter(), Counter(), Counter()
    answer_correct = flawed = 0
    for s in kept:
        qid = s["question_id"]
        if not 0 <= qid < len(problems) or problems[qid].answer != str(s["gold"]).strip():
            have = problems[qid].answer if 0 <= qid < len(problems) else "no question"
            raise ValueError(f"question_id {qid}: gold {s['gold']!r} but the toy config gives {have!r}: these "
                             "samples come from another toy config or split (pass --config / --split)")
        a = attribute_record(s, problems[qid])
        kinds[a.kind] += 1
        locations[a.label] += 1
        if a.round is not None:
            rounds[f"r{a.round}"] += 1
        answer_correct += a.answer_correct
        flawed += a.answer_correct and a.kind != "correct"
    return {
        "samples": len(kept),
        "excluded_samples": len(samples) - len(kept),
        "answer_correct": answer_correct,
        "right_answer_flawed_trace": flawed,
        "kinds": {k: kinds[k] for k in KINDS},
        "first_failure_round": dict(sorted(rounds.items(), key=lambda item: int(item[0][1:]))),
        "locations": dict(sorted(locations.items(), key=lambda item: _location_order(item[0]))),
    }


# --- reading evaluation folders -------------------------------------------------------------------------


def samples_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "samples.jsonl" if path.is_dir() else path


def read_samples(path: str | Path) -> list[dict]:
    """The records of a samples.jsonl (or of the one in folder `path`)."""
    file = samples_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no samples.jsonl (an evaluation folder: RUN_DIR/eval/step-N)")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def find_config(path: str | Path) -> Path | None:
    """config.yaml next to the samples or up to two folders above (RUN_DIR/eval/step-N -> RUN_DIR)."""
    folder = samples_file(path).parent.resolve()
    for candidate in [folder, *folder.parents[:2]]:
        if (candidate / "config.yaml").is_file():
            return candidate / "config.yaml"
    return None


def toy_settings(config_path: str | Path) -> tuple[ToyConfig, str]:
    """(data.toy, eval.split) of a run config. Read as plain YAML with the defaults of cluster/config/schema.py
    rather than validated by it: a run folder's config.yaml stays readable when the config schema moves on."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    data, evaluation = raw.get("data") or {}, raw.get("eval") or {}
    dataset = evaluation.get("path") or data.get("path")
    if dataset != "toy":
        raise ValueError(f"{config_path}: the evaluation data is {dataset!r}, not the toy task; only toy-task "
                         "solutions can be checked step by step")
    known = {f.name for f in dataclasses.fields(ToyConfig)}
    toy = ToyConfig(**{k: v for k, v in (data.get("toy") or {}).items() if k in known})
    return toy, evaluation.get("split") or "test"


def diagnose_folder(path: str | Path, config_path: str | Path | None = None, split: str | None = None) -> dict:
    """`diagnose` on an evaluation folder's samples, its questions regenerated from the run's config."""
    samples = read_samples(path)
    config_path = config_path or find_config(path)
    if config_path is None:
        raise FileNotFoundError(f"{path}: no config.yaml here or in the two folders above; pass --config")
    toy, config_split = toy_settings(config_path)
    count = max((s["question_id"] for s in samples), default=-1) + 1
    problems = toy_problems(toy, split or config_split, count) if count else []
    return {"samples_file": str(samples_file(path)), "config": str(config_path), **diagnose(samples, problems)}


def table(results: dict[str, dict]) -> str:
    """Counts side by side, one column per evaluation (e.g. before / after training); rows that are zero in
    every column are left out."""
    names = [Path(name).name or name for name in results]
    if len(set(names)) < len(names):
        names = list(results)
    columns = list(results.values())
    rows: list[tuple[str, list]] = [(key.replace("_", " "), [c[key] for c in columns])
                                    for key in ("samples", "answer_correct", "right_answer_flawed_trace")]
    rows.append(("first failure:", None))
    rows += [(f"  {kind}", [c["kinds"][kind] for c in columns]) for kind in KINDS]
    for section in ("first_failure_round", "locations"):
        keys = sorted({k for c in columns for k in c[section]},
                      key=(lambda k: int(k[1:])) if section == "first_failure_round" else _location_order)
        rows.append(("in round:" if section == "first_failure_round" else "where:", None))
        rows += [(f"  {k}", [c[section].get(k, 0) for c in columns]) for k in keys]
    rows = [(label, counts) for label, counts in rows if counts is None or any(counts)]
    width = max(len(label) for label, _ in rows)
    widths = [max(len(n), 7) for n in names]
    lines = [" " * width + "".join(f"  {n:>{w}}" for n, w in zip(names, widths))]
    for label, counts in rows:
        cells = "" if counts is None else "".join(f"  {c:>{w}}" for c, w in zip(counts, widths))
        lines.append(f"{label:<{width}}{cells}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.bench.diagnosis",
        description="Where toy-task solutions first go wrong, counted per round and step, for one or more "
                    "evaluations side by side (e.g. RUN_DIR/eval/step-0 RUN_DIR/eval/step-40).")
    parser.add_argument("evals", nargs="+", metavar="EVAL",
                        help="an evaluation folder (RUN_DIR/eval/step-N, a `motif eval` output) or samples.jsonl")
    parser.add_argument("--config", help="the run's config (default: config.yaml in or up to two folders above EVAL)")
    parser.add_argument("--split", help="the toy split evaluated (default: the config's eval.split)")
    parser.add_argument("--json", metavar="FILE", help="write the JSON here instead of printing it after the table")
    args = parser.parse_args(argv)
    try:
        results = {path: diagnose_folder(path, args.config, args.split) for path in args.evals}
    except (OSError, ValueError, KeyError, yaml.YAMLError) as e:
        print(f"diagnosis: {e}", file=sys.stderr)
        return 2
    print(table(results))
    text = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"json: {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
