"""Plain records that cross actor boundaries (no vLLM or torch objects)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One generated sample and where it came from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    # vLLM's logprob of each completion token (by default of the model's distribution before temperature and
    # top-p); for analysis only: the learner computes its own
    logprobs: list[float]
    finish_reason: str  # "stop" | "length" | "abort"
    adapter_version: int  # 0 = base model, v > 0 = adapter pushed as version v
    adapter_digest: str = ""  # sha256 of the adapter files the worker loaded ("" = base model): attestation
    worker: int = -1  # index of the rollout worker that generated it


@dataclass
class MotifTrajectory:
    """A round-1 sample of one prompt and its k continuation chains through rounds 2..R."""

    prompt_index: int
    first: Completion
    chains: list[list[Completion]] = field(default_factory=list)  # k chains of R-1 rounds (fewer after a failed one)
    round_prompts: list[list[str]] = field(default_factory=list)  # user message per chain and round
    missing_progress: int = 0  # rounds of this trajectory that passed on no <progress> block

    def final_texts(self) -> list[str]:
        """The last round's text of each chain (round 1's own text when R == 1)."""
        return [chain[-1].text for chain in self.chains] if self.chains else [self.first.text]


@dataclass(frozen=True)
class AdapterPayload:
    """A PEFT adapter as bytes, so it can travel through Ray's object store to workers on any node."""

    version: int
    files: dict[str, bytes]  # file name -> contents of the adapter folder (flat)

    @classmethod
    def from_folder(cls, version: int, folder) -> AdapterPayload:
        from pathlib import Path

        return cls(version, {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()})

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + len(self.files[name]).to_bytes(8, "little") + self.files[name])
        return h.hexdigest()
