"""The rules that cross sections of a run's config; each section's own rules are its `validate`."""

from __future__ import annotations

from cluster.config.errors import ConfigError
from rewards.registry import overlong_window
from rollout.engine import VLLM_LORA_RANKS
from rollout.protocols import PROTOCOLS, protocol_name


def check_run(config, training: bool) -> None:
    """config: a RunConfig. training=False (`motif eval`): without the rules that only concern the learner."""
    r, learner = config.rollout, config.learner
    protocol = protocol_name(r.protocol, r.rounds)
    if learner.credit not in PROTOCOLS[protocol].credits:
        raise ConfigError(f"learner.credit={learner.credit} does not know the episodes of rollout.protocol="
                          f"{protocol} (its credits: {', '.join(PROTOCOLS[protocol].credits)})")
    if training and learner.credit == "every_turn" and (r.continuation_top_p != 1 or r.continuation_policy != "current"):
        raise ConfigError("learner.credit=every_turn trains every turn: the later ones must be sampled from the full "
                          "distribution (rollout.continuation_top_p=1) of the policy being trained "
                          f"(rollout.continuation_policy=current), got {r.continuation_top_p}, {r.continuation_policy!r}")
    if training and learner.credit == "every_round" and (r.rounds > 1 or protocol == "markovian"):
        # The default trains the continuation rounds; learner.credit=first_round (MOTIF as published) does not.
        if r.continuations < 2:
            raise ConfigError("learner.credit=every_round ranks a sample's continuations against each other: "
                              f"it needs rollout.continuations >= 2, got {r.continuations} (or set "
                              "learner.credit=first_round to train round 1 only)")
        if r.continuation_top_p != 1 or r.continuation_policy != "current":
            raise ConfigError("learner.credit=every_round trains the continuation rounds: they must be sampled "
                              "from the full distribution (rollout.continuation_top_p=1) of the policy being "
                              f"trained (rollout.continuation_policy=current), got {r.continuation_top_p}, "
                              f"{r.continuation_policy!r} (or set learner.credit=first_round to train round 1 "
                              "only)")
    if training and learner.mask_truncated and protocol == "markovian" and r.carry == "tokens":
        raise ConfigError("learner.mask_truncated would leave out the rounds that rollout.carry=tokens carries over "
                          "at rollout.max_tokens by design (use carry=progress, or leave mask_truncated off)")
    if training and r.max_staleness and (r.dynamic_sampling or (config.cluster.placement == "colocate" and r.num_gpus > 0)):
        # Refills sample inside the step, and colocated engines sleep while the learner trains: neither overlaps.
        raise ConfigError(f"rollout.max_staleness={r.max_staleness} overlaps rollouts with training: it does not "
                          "combine with rollout.dynamic_sampling or with cluster.placement=colocate on GPUs")
    for term in config.reward.components:
        if term.name == "overlong":
            try:
                overlong_window(term, r.max_tokens)  # its limit defaults to the rollout's
            except ValueError as e:
                raise ConfigError(str(e)) from None
    if config.eval.max_rounds is not None and protocol != "markovian":
        raise ConfigError(f"eval.max_rounds is for rollout.protocol=markovian (rounds that stop when one answers); "
                          f"rollout.protocol={protocol} evaluates eval.rounds")
    if learner.lora_rank > VLLM_LORA_RANKS[-1]:
        raise ConfigError(f"learner.lora_rank above {VLLM_LORA_RANKS[-1]} is not supported by vLLM's LoRA kernels")
    if training and learner.finetune != "lora":
        raise ConfigError("learner.finetune must be lora for training: vLLM is updated by pushing adapters "
                          "(full-parameter training is for `motif sft`)")
