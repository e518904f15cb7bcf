"""Ray actor hosting one vLLM engine: batched generation and adapter pushes (as files or as bytes)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import ray

from rollout.engine import VLLMEngine, sampling_refusal
from rollout.records import AdapterPayload, Completion, SamplingSpec


ADAPTER_FOLDER_PREFIX = "motif-adapters-"


def local_adapter_root() -> Path:
    """A folder on this node for pushed adapters: tmpfs when there is one, so no disk and no shared filesystem.

    Named by the worker's pid: a killed worker never runs its cleanup, so each new one removes the folders of
    workers on this node that are gone."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    for old in base.glob(f"{ADAPTER_FOLDER_PREFIX}*"):
        pid = old.name[len(ADAPTER_FOLDER_PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{ADAPTER_FOLDER_PREFIX}{os.getpid()}-", dir=base))


@ray.remote
class RolloutWorker:
    def __init__(self, model: str, index: int = 0, **engine_kwargs):
        self.index = index
        self.engine = VLLMEngine(model, **engine_kwargs)
        self._adapters: Path | None = None

    def generate(
        self, conversations: list[list[dict[str, str]]], spec: SamplingSpec, use_adapter: bool = True,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        groups = self.engine.generate(conversations, spec, use_adapter=use_adapter, seed=seed)
        return [[dataclasses.replace(c, worker=self.index) for c in group] for group in groups]

    def load_adapter_payload(self, payload: AdapterPayload) -> str:
        """Serve an adapter that arrived as bytes; returns the digest of what was loaded, for the caller to
        check against what it sent."""
        if self._adapters is None:
            self._adapters = local_adapter_root()
        folder = self._adapters / f"v{payload.version}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in payload.files.items():
            (folder / name).write_bytes(data)
        digest = AdapterPayload.from_folder(payload.version, folder).digest
        self.engine.load_adapter(folder, payload.version, digest)
        # vLLM has read the weights; only the folder of the version being served is kept.
        for old in self._adapters.iterdir():
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        return digest

    def sampling_refusals(self, specs: list[SamplingSpec]) -> list[str | None]:
        return [sampling_refusal(spec) for spec in specs]

    def sleep(self) -> None:
        self.engine.sleep()

    def adapter_version(self) -> int:
        return self.engine.adapter_version

    def pid(self) -> int:
        return os.getpid()

    def __del__(self):
        if getattr(self, "_adapters", None) is not None:  # absent when the constructor failed
            shutil.rmtree(self._adapters, ignore_errors=True)
