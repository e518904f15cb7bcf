"""The protocol a run samples with, from its config: rounds, fan-out, sampling, and each round's system prompt."""

from __future__ import annotations

from cluster.config import RunConfig
from rewards.motivation import motivated_system_prompt
from rewards.registry import Reward
from rollout.protocols.motif import SYSTEM_PROMPT, MotifSpec, motif_response_format
from rollout.records import SamplingSpec


def motif_spec(config: RunConfig, rewards: list[Reward]) -> MotifSpec:
    r = config.rollout

    def system_prompt(response_format: str) -> str:
        return motivated_system_prompt(SYSTEM_PROMPT, rewards, response_format, config.reward.motivation)

    return MotifSpec(
        samples_per_prompt=r.samples_per_prompt,
        continuations=r.continuations,
        rounds=r.rounds,
        first_round=SamplingSpec(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens),
        continuation=SamplingSpec(temperature=r.continuation_temperature, top_p=r.continuation_top_p,
                                  max_tokens=r.max_tokens),
        continuation_policy=r.continuation_policy,
        # Each round is told what it is rewarded for producing: progress before the last round, an answer in it.
        system_prompt=system_prompt(motif_response_format(r.rounds)),
        final_system_prompt=system_prompt("reasoning_answer"),
    )
