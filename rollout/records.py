"""Plain records that cross actor boundaries (no vLLM or torch objects)."""

from __future__ import annotations

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
    logprobs: list[float]  # sampling logprob of each completion token, as vLLM reports it
    finish_reason: str  # "stop" | "length" | "abort"
    adapter_version: int  # 0 = base model, v > 0 = adapter pushed as version v


@dataclass
class MotifTrajectory:
    """A round-1 sample of one prompt and its k continuation chains through rounds 2..R."""

    prompt_index: int
    first: Completion
    chains: list[list[Completion]] = field(default_factory=list)  # k chains, each of R-1 rounds
    round_prompts: list[list[str]] = field(default_factory=list)  # user message per chain and round
    missing_progress: int = 0  # rounds of this trajectory that passed on no <progress> block

    def final_texts(self) -> list[str]:
        """The last round's text of each chain (round 1's own text when R == 1)."""
        return [chain[-1].text for chain in self.chains] if self.chains else [self.first.text]
