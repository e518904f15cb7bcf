"""Where a run's model comes from: a hub id or folder as given, or one of the offline models built here (the
tiny random model, or the tiny model warm-started by SFT on the toy task), built once and cached in one place
per user (cluster.cache), whatever the working directory."""

from __future__ import annotations

from pathlib import Path

from cluster.cache import build_lock, cache_dir, tiny_model_digest
from cluster.config import ModelConfig
from cluster.tasks.toy_task import ToyConfig
from cluster.tasks.warm_start import ensure_toy_warm_start

TINY = "tiny"
TOY_WARM_START = "toy-warm-start"


def resolve_model(model: ModelConfig, toy: ToyConfig) -> str:
    """A path or id that `from_pretrained` and vLLM load."""
    if model.path == TINY:
        from learner.tiny_model import ensure_tiny_model

        folder = Path(model.tiny_model_dir).resolve() if model.tiny_model_dir else \
            cache_dir() / f"tiny-model-{tiny_model_digest()}"
        if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
            return str(folder)  # built: no lock (the folder may be read-only)
        with build_lock(folder):
            return str(ensure_tiny_model(folder))
    if model.path == TOY_WARM_START:
        return str(ensure_toy_warm_start(model.warm_start, toy))
    return model.path


def shipped_paths() -> dict[str, Path]:
    """`motif paths`: where this copy of motif-rl (a checkout or an installed wheel) keeps its shipped files,
    and the model cache."""
    package = Path(__file__).resolve().parent
    return {"configs": package / "configs", "datasets": package / "tasks" / "datasets", "launch": package / "launch",
            "constraints": package / "constraints-cpu.txt", "cache": cache_dir()}
