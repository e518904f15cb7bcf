"""The protocol a run samples with, from its config: rounds, fan-out, sampling, and each round's system prompt."""

from __future__ import annotations

from cluster.config import RunConfig
from rewards.motivation import motivated_system_prompt
from rewards.registry import Reward
from rollout.protocols import PROTOCOLS, Protocol, protocol_name
from rollout.protocols.motif import SYSTEM_PROMPT, MotifSpec
from rollout.records import SamplingSpec


def run_protocol(config: RunConfig) -> Protocol:
    return PROTOCOLS[protocol_name(config.rollout.protocol, config.rollout.rounds)]


def response_format(config: RunConfig) -> str:
    """The FORMATS entry the trained response follows under the run's protocol."""
    return run_protocol(config).response_format(config.rollout)


def rollout_spec(config: RunConfig, rewards: list[Reward], model_path: str | None = None) -> MotifSpec:
    """The run's protocol's spec (a MotifSpec, or one that extends it); `model_path` for a protocol that reads
    token ids (markovian's token carry-over)."""
    r = config.rollout
    protocol = run_protocol(config)
    base = protocol.system_prompt(r) if protocol.system_prompt else SYSTEM_PROMPT

    def system_prompt(response_format: str) -> str:
        return motivated_system_prompt(base, rewards, response_format, config.reward.motivation)

    common = MotifSpec(
        samples_per_prompt=r.samples_per_prompt,
        continuations=r.continuations,
        rounds=r.rounds,
        first_round=SamplingSpec(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens),
        continuation=SamplingSpec(temperature=r.continuation_temperature, top_p=r.continuation_top_p,
                                  max_tokens=r.max_tokens),
        continuation_policy=r.continuation_policy,
        # Each round is told what it is rewarded for producing: progress before the last round, an answer in it.
        system_prompt=system_prompt(protocol.response_format(r)),
        final_system_prompt=system_prompt(protocol.final_format(r)),
    )
    return protocol.spec(common, r, tokenizer=model_path)
