"""Problems from a shipped dataset, the toy task, a JSONL file or a hub dataset; malformed rows are skipped
and reported."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import BadInput, DataConfig
from cluster.tasks.toy_task import toy_problems
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
    noun: str = "problems"

    def skip(self, row: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"row {row}: {reason}")

    def summary(self) -> str:
        text = f"{self.loaded} {self.noun} loaded"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())} rows ({reasons}); e.g. " + "; ".join(self.examples)
        return text


@dataclass(frozen=True)
class NamedDataset:
    splits: tuple[str, ...]
    question_field: str
    answer_field: str
    gold_format: str


SHIPPED = Path(__file__).parent / "datasets"  # copies with their sources and sha256: datasets/README.md
NAMED_DATASETS = {
    "gsm8k": NamedDataset(("train", "test"), "question", "answer", "gsm8k"),
    "math500": NamedDataset(("test",), "problem", "answer", "plain"),
    "aime24": NamedDataset(("test",), "problem", "answer", "plain"),
}
TOY = "toy"  # the synthetic task of cluster/tasks/toy_task.py
TOY_DEFAULT_COUNT = 1000


def resolve_fields(config: DataConfig) -> tuple[str, str, str | None]:
    """(question field, answer field, gold format) with the named dataset's presets filling what is unset."""
    named = NAMED_DATASETS.get(config.path)
    return (
        config.question_field or (named.question_field if named else "question"),
        config.answer_field or (named.answer_field if named else "answer"),
        config.gold_format or (named.gold_format if named else None),
    )


def _source_file(config: DataConfig, split_key: str) -> Path | None:
    named = NAMED_DATASETS.get(config.path)
    if named is not None:
        if config.split not in named.splits:
            raise BadInput(f"{split_key} {config.split}: dataset {config.path} has splits {', '.join(named.splits)}, "
                           f"not {config.split!r}")
        return SHIPPED / config.path / f"{config.split}.jsonl"
    if Path(config.path).suffix in (".jsonl", ".json") or Path(config.path).is_file():
        return Path(config.path)
    return None


def data_file(path: str | Path, where: str = "data.path") -> Path:
    """`path` as a file with at least one non-blank line, else a BadInput naming the config key `where`."""
    file = Path(path)
    if not file.is_file():
        raise BadInput(f"{where} {path}: no such file")
    with file.open("rb") as f:
        while chunk := f.read(1 << 16):  # stops at the first chunk with text: a real dataset costs one read
            if chunk.strip():
                return file
    raise BadInput(f"{where} {path}: no rows (the file is empty or holds only blank lines)")


def jsonl_rows(path: str | Path, where: str = "data.path"):
    """(row index, dict or parse-error string) for each non-blank line of a JSONL file, in order."""
    import datasets

    data_file(path, where)  # a 0-byte file fails inside `datasets`, a blank one reads as rows of nothing
    # The text builder never fails on a bad line, so one malformed row costs one row, not the run; each
    # line is then parsed here to name the bad ones.
    datasets.disable_progress_bars()  # a few rows are read in a blink; the bar would only clutter the console
    lines = datasets.load_dataset("text", data_files=str(path), split="train")
    for i, line in enumerate(lines["text"]):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, f"invalid JSON ({e.msg})"


def json_objects(rows, report: LoadReport):
    """The (index, dict) rows that are JSON objects; the others are skipped into `report` with their reason."""
    for i, row in rows:
        if isinstance(row, str):
            report.skip(i, row)
        elif not isinstance(row, dict):
            report.skip(i, "row is not a JSON object")
        else:
            yield i, row


def _raw_rows(config: DataConfig, path_key: str, split_key: str):
    """(row index, dict or parse-error string) for each row, in source order."""
    import datasets

    source = _source_file(config, split_key)
    if source is not None:
        yield from jsonl_rows(source, path_key)
        return
    try:
        rows = datasets.load_dataset(config.path, config.subset, split=config.split)
    except (OSError, ValueError) as e:  # no such dataset or folder, the hub out of reach, an unknown split
        raise BadInput(f"{path_key} {config.path}, {split_key} {config.split}: not a shipped dataset, a file or a "
                       f"hub dataset that loads here ({' '.join(str(e).split())})") from None
    yield from enumerate(rows)


def _gold(answer: str, gold_format: str | None) -> str:
    if gold_format == "gsm8k" or (gold_format is None and "####" in answer):
        return gsm8k_gold(answer)
    return answer.strip()


def load_problems(config: DataConfig, path_key: str = "data.path",
                  split_key: str = "data.split") -> tuple[list[Problem], LoadReport]:
    """The usable problems of `config`; a BadInput names `path_key` / `split_key` (the eval section's keys when
    it loads the held-out set)."""
    report = LoadReport()
    if config.path == TOY:
        try:
            toy = toy_problems(config.toy, config.split, config.limit or TOY_DEFAULT_COUNT)
        except ValueError as e:
            raise BadInput(f"{path_key} {TOY}, {split_key} {config.split}: {e}") from None
        report.loaded = len(toy)
        return [Problem(p.question, p.answer, i) for i, p in enumerate(toy)], report
    question_field, answer_field, gold_format = resolve_fields(config)
    problems: list[Problem] = []
    for i, row in json_objects(_raw_rows(config, path_key, split_key), report):
        if config.limit is not None and len(problems) >= config.limit:
            break
        question, answer = row.get(question_field), row.get(answer_field)
        if not isinstance(question, str) or not question.strip():
            report.skip(i, f"missing or empty '{question_field}'")
            continue
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            report.skip(i, f"missing '{answer_field}'")
            continue
        try:
            gold = _gold(str(answer), gold_format)
        except ValueError:
            report.skip(i, "answer has no '####' final answer")
            continue
        problems.append(Problem(question.strip(), gold, i))
    report.loaded = len(problems)
    if not problems:
        raise BadInput(f"{path_key} {config.path}: no usable problems; {report.summary()}")
    return problems, report
