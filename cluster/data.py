"""Training problems from a JSONL file or a hub dataset, with malformed rows skipped and reported."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import DataConfig
from rewards.math_answers import gsm8k_gold


@dataclass(frozen=True)
class Problem:
    question: str
    gold: str
    row: int  # 0-based row index in the source, for error messages


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # first few "row N: reason" lines

    def skip(self, row: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"row {row}: {reason}")

    def summary(self) -> str:
        text = f"{self.loaded} problems loaded"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())} rows ({reasons}); e.g. " + "; ".join(self.examples)
        return text


def _raw_rows(config: DataConfig):
    """(row index, dict or parse-error string) for each row, in source order."""
    import datasets

    if Path(config.path).suffix in (".jsonl", ".json") or Path(config.path).is_file():
        if not Path(config.path).is_file():
            raise FileNotFoundError(f"data.path {config.path} does not exist")
        # The text builder never fails on a bad line, so one malformed row costs one row, not the run;
        # each line is then parsed here to name the bad ones.
        lines = datasets.load_dataset("text", data_files=config.path, split="train")
        for i, line in enumerate(lines["text"]):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, f"invalid JSON ({e.msg})"
    else:
        for i, row in enumerate(datasets.load_dataset(config.path, config.subset, split=config.split)):
            yield i, row


def load_problems(config: DataConfig) -> tuple[list[Problem], LoadReport]:
    report = LoadReport()
    problems: list[Problem] = []
    for i, row in _raw_rows(config):
        if config.limit is not None and len(problems) >= config.limit:
            break
        if isinstance(row, str):
            report.skip(i, row)
            continue
        if not isinstance(row, dict):
            report.skip(i, "row is not a JSON object")
            continue
        question, answer = row.get(config.question_field), row.get(config.answer_field)
        if not isinstance(question, str) or not question.strip():
            report.skip(i, f"missing or empty '{config.question_field}'")
            continue
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            report.skip(i, f"missing '{config.answer_field}'")
            continue
        try:
            gold = gsm8k_gold(str(answer)) if config.gold_format == "gsm8k" else str(answer).strip()
        except ValueError:
            report.skip(i, "answer has no '####' final answer")
            continue
        problems.append(Problem(question.strip(), gold, i))
    report.loaded = len(problems)
    if not problems:
        raise ValueError(f"no usable problems in {config.path}: {report.summary()}")
    return problems, report
