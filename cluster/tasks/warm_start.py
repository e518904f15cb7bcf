"""The toy task's warm start: the tiny model SFT'd (by `motif sft`, in its own process) on imperfect toy traces,
built once per setting and cached per user."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.cache import build_lock, cache_dir, tiny_model_digest
from cluster.config import ModelConfig, SFTDataConfig, SFTRunConfig, WarmStartConfig, to_dict
from cluster.tasks.toy_task import ToyConfig, rlmt_corpus, self_correct_corpus, sft_rows, tokenizer_corpus
from learner.config import LearnerConfig
from rollout.common import replace_directory
from rollout.protocols.markovian import OPEN_FORMAT


def warm_start_plan(settings: WarmStartConfig, toy: ToyConfig) -> tuple[list[ToyConfig], list[str], str]:
    """The toy tasks a warm start imitates (the task's difficulty, or each of `settings.operations`), the
    tokenizer corpus, and the cache key of everything that shapes the model (settings, tasks, protocol texts,
    the tiny model's code): runs of different difficulties share a warm start built for all of them."""
    tasks = [dataclasses.replace(toy, operations=d) for d in settings.operations or [toy.operations]]
    corpus = [text for task in tasks for text in tokenizer_corpus(task)]
    if settings.verdict_accuracy is not None:
        corpus += self_correct_corpus()
    if settings.markovian_rounds is not None:
        corpus.append(OPEN_FORMAT)
    if settings.rlmt:
        corpus += rlmt_corpus()
    shaping = dataclasses.asdict(settings) | {"dir": None}
    # Fields at their "not used" value leave the key of the warm starts built before they existed unchanged.
    for name, unused in (("operations", None), ("verdict_accuracy", None), ("markovian_rounds", None), ("rlmt", False)):
        if shaping[name] is unused:
            del shaping[name]
    shown = [{k: v for k, v in dataclasses.asdict(t).items() if not (k == "max_operations" and v is None)}
             for t in tasks]
    key_material = json.dumps([shaping, *shown, corpus, tiny_model_digest()])
    return tasks, corpus, hashlib.sha256(key_material.encode()).hexdigest()[:12]


def ensure_toy_warm_start(settings: WarmStartConfig, toy: ToyConfig) -> Path:
    """The tiny model SFT'd on imperfect toy traces in every protocol of `settings.rounds` (see
    warm_start_plan); built on first use and cached in `settings.dir`, default the user's cache."""
    tasks, corpus, key = warm_start_plan(settings, toy)
    root = Path(settings.dir).resolve() if settings.dir else cache_dir() / "warm-start"
    folder = root / f"toy-{key}"
    model = folder / "model"
    if (model / "config.json").exists():
        return model
    with build_lock(folder):
        if (model / "config.json").exists():  # another run built it while this one waited
            return model
        _build_toy_warm_start(settings, tasks, corpus, folder)
    return model


def _build_toy_warm_start(settings: WarmStartConfig, tasks: list[ToyConfig], corpus: list[str],
                          folder: Path) -> None:
    tqdm.write(f"warm start: building the toy-task SFT model in {folder} (once; cached for later runs)")
    replace_directory(folder, lambda work: _build_into(work, settings, tasks, corpus))


def _build_into(work: Path, settings: WarmStartConfig, tasks: list[ToyConfig], corpus: list[str]) -> None:
    from learner.tiny_model import build_tiny_model

    base = build_tiny_model(work / "base", seed=settings.seed, extra_corpus=corpus)
    rows = [row for i, task in enumerate(tasks)
            for row in sft_rows(task, settings.problems // len(tasks), tuple(settings.rounds), settings.error_rate,
                                seed=settings.seed + i, verdict_accuracy=settings.verdict_accuracy,
                                markovian_rounds=settings.markovian_rounds, rlmt=settings.rlmt)]
    if len(tasks) > 1:
        random.Random(settings.seed).shuffle(rows)  # sft_rows shuffles each difficulty's rows, not the mix
    (work / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    sft = SFTRunConfig(
        output_dir=str(work),
        steps=settings.steps,
        seed=settings.seed,
        model=ModelConfig(path=str(base)),
        data=SFTDataConfig(path=str(work / "sft.jsonl")),
        learner=LearnerConfig(
            finetune="full", learning_rate=settings.learning_rate, warmup_steps=min(30, settings.steps // 10),
            mini_batch_size=settings.batch_size, micro_batch_size=settings.batch_size, seed=settings.seed,
        ),
    )
    (work / "sft.yaml").write_text(yaml.safe_dump(to_dict(sft), sort_keys=False))
    # `motif sft` in its own process, exactly as a user runs it: the learner's process group and environment
    # (MASTER_PORT, RANK) must not leak into this process, whose Ray actors start their own.
    subprocess.run([sys.executable, "-m", "cluster.cli", "sft", "--config", str(work / "sft.yaml")], check=True)
    shutil.rmtree(work / "base")
