"""Where a run's model comes from: a hub id or folder as given, or one of the offline models built here (the
tiny random model, or the tiny model warm-started by SFT on the toy task), built once and cached in one place
per user (`cache_dir`), whatever the working directory."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.config import ModelConfig, SFTDataConfig, SFTRunConfig, WarmStartConfig, to_dict
from cluster.toy_task import ToyConfig, sft_rows, tokenizer_corpus
from learner.config import LearnerConfig

TINY = "tiny"
TOY_WARM_START = "toy-warm-start"


def cache_dir() -> Path:
    """The per-user cache of built models: $MOTIF_CACHE, else $XDG_CACHE_HOME/motif-rl, else ~/.cache/motif-rl.
    Not the working directory: runs from any folder (and every `ray job submit` copy of the project) share it."""
    if os.environ.get("MOTIF_CACHE"):
        return Path(os.environ["MOTIF_CACHE"]).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "motif-rl").resolve()


def _tiny_model_digest() -> str:
    """The tiny model's builder code: a cache shared by every version of the project must not serve a model
    built by other code."""
    import learner.tiny_model

    return hashlib.sha256(Path(learner.tiny_model.__file__).read_bytes()).hexdigest()[:12]


@contextlib.contextmanager
def _build_lock(folder: Path):
    """One builder at a time per cached folder (runs started together share the user's cache); the others wait
    and then find it built."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_model(model: ModelConfig, toy: ToyConfig) -> str:
    """A path or id that `from_pretrained` and vLLM load."""
    if model.path == TINY:
        from learner.tiny_model import ensure_tiny_model

        folder = Path(model.tiny_model_dir).resolve() if model.tiny_model_dir else \
            cache_dir() / f"tiny-model-{_tiny_model_digest()}"
        if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
            return str(folder)  # built: no lock (the folder may be read-only)
        with _build_lock(folder):
            return str(ensure_tiny_model(folder))
    if model.path == TOY_WARM_START:
        return str(ensure_toy_warm_start(model.warm_start, toy))
    return model.path


def ensure_toy_warm_start(settings: WarmStartConfig, toy: ToyConfig) -> Path:
    """The tiny model SFT'd on imperfect toy traces in every protocol of `settings.rounds`; built on first use
    and cached (in `settings.dir`, default the user's cache) under a key of everything that shapes it (settings,
    toy task, the protocol texts, the tiny model's code)."""
    corpus = tokenizer_corpus(toy)
    key_material = json.dumps([dataclasses.asdict(settings) | {"dir": None}, dataclasses.asdict(toy), corpus,
                               _tiny_model_digest()])
    root = Path(settings.dir).resolve() if settings.dir else cache_dir() / "warm-start"
    folder = root / f"toy-{hashlib.sha256(key_material.encode()).hexdigest()[:12]}"
    model = folder / "model"
    if (model / "config.json").exists():
        return model
    with _build_lock(folder):
        if (model / "config.json").exists():  # another run built it while this one waited
            return model
        _build_toy_warm_start(settings, toy, corpus, folder)
    return model


def _build_toy_warm_start(settings: WarmStartConfig, toy: ToyConfig, corpus: list[str], folder: Path) -> None:
    tqdm.write(f"warm start: building the toy-task SFT model in {folder} (once; cached for later runs)")
    from learner.tiny_model import build_tiny_model

    work = folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    base = build_tiny_model(work / "base", seed=settings.seed, extra_corpus=corpus)
    rows = sft_rows(toy, settings.problems, tuple(settings.rounds), settings.error_rate, seed=settings.seed)
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
    work.rename(folder)


def shipped_paths() -> dict[str, Path]:
    """`motif paths`: where this copy of motif-rl (a checkout or an installed wheel) keeps its shipped files,
    and the model cache."""
    package = Path(__file__).resolve().parent
    return {"configs": package / "configs", "datasets": package / "datasets", "launch": package / "launch",
            "constraints": package / "constraints-cpu.txt", "cache": cache_dir()}
