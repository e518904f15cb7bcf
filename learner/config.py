"""Typed learner settings (the `learner:` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LearnerConfig:
    finetune: str = "lora"  # "lora": train a PEFT LoRA adapter; "full": every weight (SFT only)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 1e-5
    # Linear warm-up over warmup_steps, then linear decay to 0 at decay_steps optimizer steps; 0: constant.
    warmup_steps: int = 0
    decay_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 0
    num_ranks: int = 1  # data-parallel ranks (Ray actors in one DeepSpeed group)
    # ZeRO-3 keeps tensors of fewer elements than this whole on every rank (DeepSpeed's default: 1e5); 0 shards
    # every tensor, which a small model needs to be partitioned at all
    zero3_param_persistence_threshold: int = 100_000
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    logprob_chunk_tokens: int = 1024  # positions per vocabulary-projection chunk when computing token logprobs
    # Recompute each chunk's logits in backward instead of keeping them: memory of one chunk, not of the
    # whole [batch, length, vocab], for one more vocabulary projection per training forward
    logprob_recompute: bool = True
    # Samples per optimizer step; the rollout batch is split into batch/mini_batch_size updates.
    mini_batch_size: int = 8
    micro_batch_size: int = 4
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    advantage_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    policy_loss: str = "clipped"  # the objective (learner.objectives.OBJECTIVES)
    loss_aggregation: str = "token_mean"  # how per-token losses become one (learner.objectives.aggregation)
    # Which rounds are trained (learner.credit.CREDIT): "every_round" (round 1 by future accuracy, and the
    # continuation rounds by their own chain's answer: it held at every difficulty of the learning grid) or
    # "first_round" (MOTIF as published: round 1 only)
    credit: str = "every_round"
    seed: int = 0

    def validate(self) -> None:
        from learner.credit import CREDIT
        from learner.advantages import ADVANTAGE_ESTIMATORS
        from learner.objectives import OBJECTIVES
        from learner.objectives.aggregation import AGGREGATIONS

        if self.finetune not in ("lora", "full"):
            raise ValueError(f"learner.finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.warmup_steps < 0 or self.decay_steps < 0 or (self.decay_steps and self.decay_steps <= self.warmup_steps):
            raise ValueError("learner.warmup_steps and learner.decay_steps must be >= 0, decay_steps above warmup_steps")
        if self.lora_rank < 1:
            raise ValueError(f"learner.lora_rank must be >= 1, got {self.lora_rank}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.zero3_param_persistence_threshold < 0:
            raise ValueError("learner.zero3_param_persistence_threshold must be >= 0, "
                             f"got {self.zero3_param_persistence_threshold}")
        if self.logprob_chunk_tokens < 1:
            raise ValueError(f"learner.logprob_chunk_tokens must be >= 1, got {self.logprob_chunk_tokens}")
        if self.num_ranks < 1:
            raise ValueError(f"learner.num_ranks must be >= 1, got {self.num_ranks}")
        if self.mini_batch_size < 1 or self.micro_batch_size < 1 or self.mini_batch_size % self.micro_batch_size:
            raise ValueError(
                f"learner.mini_batch_size ({self.mini_batch_size}) must be a positive multiple of "
                f"learner.micro_batch_size ({self.micro_batch_size})"
            )
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"learner.advantage_estimator {self.advantage_estimator!r} is not one of {sorted(ADVANTAGE_ESTIMATORS)}")
        if self.policy_loss not in OBJECTIVES:
            raise ValueError(f"learner.policy_loss {self.policy_loss!r} is not one of {sorted(OBJECTIVES)}")
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"learner.loss_aggregation {self.loss_aggregation!r} is not one of {list(AGGREGATIONS)}")
        if self.credit not in CREDIT:
            raise ValueError(f"learner.credit {self.credit!r} is not one of {sorted(CREDIT)}")
        if self.learning_rate < 0 or self.kl_coef < 0:
            raise ValueError("learner.learning_rate and learner.kl_coef must be >= 0")
