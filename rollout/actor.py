"""Ray actor hosting one vLLM engine: batched generation, MOTIF rollouts and adapter pushes."""

from __future__ import annotations

from collections.abc import Sequence

import ray

from rollout.engine import VLLMEngine
from rollout.protocols import MotifSpec, motif_rollout
from rollout.records import Completion, MotifTrajectory, SamplingSpec


@ray.remote
class RolloutWorker:
    def __init__(self, model: str, **engine_kwargs):
        self.engine = VLLMEngine(model, **engine_kwargs)

    def generate(
        self, conversations: list[list[dict[str, str]]], spec: SamplingSpec, use_adapter: bool = True
    ) -> list[list[Completion]]:
        return self.engine.generate(conversations, spec, use_adapter=use_adapter)

    def motif_rollout(self, questions: Sequence[str], spec: MotifSpec) -> list[MotifTrajectory]:
        return motif_rollout(
            lambda convs, s, use_adapter: self.engine.generate(convs, s, use_adapter=use_adapter), questions, spec
        )

    def load_adapter(self, path: str, version: int) -> int:
        self.engine.load_adapter(path, version)
        return self.engine.adapter_version

    def adapter_version(self) -> int:
        return self.engine.adapter_version
