"""Typed learner settings (the `learner:` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Field marks read by cluster/checkpoint.py: RESUME fixes what a run samples or trains in what order (a resume
# with another value is refused); LAYOUT is how the learner's state lies on disk (its own rule decides).
RESUME = {"resume": "sampling"}
LAYOUT = {"resume": "layout"}


@dataclass
class LearnerConfig:
    finetune: str = "lora"  # "lora": train a PEFT LoRA adapter; "full": every weight (SFT only)
    lora_rank: int = field(default=16, metadata=RESUME)
    lora_alpha: int = field(default=32, metadata=RESUME)
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata=RESUME,
    )
    learning_rate: float = 1e-5
    # Linear warm-up over warmup_steps, then linear decay to 0 at decay_steps optimizer steps; 0: constant.
    warmup_steps: int = 0
    decay_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = field(default=0, metadata=LAYOUT)
    num_ranks: int = field(default=1, metadata=LAYOUT)  # data-parallel ranks (Ray actors in one DeepSpeed group)
    # ZeRO-3 keeps tensors of fewer elements than this whole on every rank (DeepSpeed's default: 1e5); 0 shards
    # every tensor, which a small model needs to be partitioned at all
    zero3_param_persistence_threshold: int = 100_000
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    logprob_chunk_tokens: int = 1024  # positions per vocabulary-projection chunk when computing token logprobs
    # Recompute each chunk's logits in backward instead of keeping them: memory of one chunk, not of the
    # whole [batch, length, vocab], for one more vocabulary projection per training forward
    logprob_recompute: bool = True
    # Episodes (root samples, with every turn of theirs that is trained) per optimizer step, whatever the
    # credit or protocol; a step's episodes are split into ceil(episodes / mini_batch_size) updates. SFT:
    # samples per optimizer step; DPO: pairs. micro_batch_size counts trained samples per forward/backward
    # (DPO: at most that many, but never less than one pair, which is never split)
    mini_batch_size: int = 8
    micro_batch_size: int = 4
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    advantage_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    policy_loss: str = "clipped"  # the objective (learner.objectives.OBJECTIVES)
    loss_aggregation: str = "token_mean"  # how per-token losses become one (learner.objectives.aggregation)
    # seq_mean_token_sum_norm's constant (Dr.GRPO: the generation budget, e.g. rollout.max_tokens)
    loss_scale_tokens: int | None = None
    kl_estimator: str = "k3"  # k1 | k2 | k3 (learner.objectives.kl), in the loss and in the reward alike
    # KL in the reward (verl's algorithm.use_kl_in_reward): each episode's reward less this times the summed
    # kl_estimator estimate over its trained tokens, policy against reference, before the group normalisation;
    # 0: off (no extra pass)
    kl_in_reward_coef: float = 0.0
    # Leave every trained turn that hit rollout.max_tokens out of the loss (TRL's mask_truncated_completions,
    # DAPO's overlong filtering); its episode still counts in its group's advantages
    mask_truncated: bool = False
    # Token-level truncated importance sampling against vLLM's logprobs (learner.objectives.tis): each token's
    # policy loss weighed by min(exp(old - vLLM), tis_cap); None: off (verl and TRL use 2 to 3)
    tis_cap: float | None = None
    # How a policy loss corrects for sampling by another policy than the one trained (learner.objectives.tis):
    # "tis" weighs each token by min(exp(old - vLLM), tis_cap); "decoupled" (AReaL's) weighs it by exp(old -
    # vLLM) and leaves out the tokens whose weight is above tis_cap; "none"; "auto": "tis" where tis_cap is set
    # or rollout.max_staleness >= 1 (rollouts of an older adapter), else "none". The cap is 2 where unset.
    correction: str = "auto"
    # `motif dpo`, and `motif train` with policy_loss=dpo (learner.objectives.dpo): TRL's beta (how far from the
    # reference) and label_smoothing (cDPO)
    dpo_beta: float = 0.1
    dpo_label_smoothing: float = 0.0
    # Which rounds are trained (learner.credit.CREDIT): "every_round" (round 1 by future accuracy, and the
    # continuation rounds by their own chain's answer: it held at every difficulty of the learning grid) or
    # "first_round" (MOTIF as published: round 1 only); "best_worst" (on-policy DPO: each group's best response
    # against its worst, for policy_loss=dpo)
    credit: str = field(default="every_round", metadata=RESUME)
    seed: int = field(default=0, metadata=RESUME)

    def validate(self) -> None:
        from learner.credit import CREDIT
        from learner.advantages import ADVANTAGE_ESTIMATORS
        from learner.objectives import OBJECTIVES
        from learner.objectives.aggregation import AGGREGATIONS
        from learner.objectives.kl import KL_ESTIMATORS
        from learner.objectives.tis import CORRECTIONS

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
        if self.mini_batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError(f"learner.mini_batch_size and learner.micro_batch_size must be >= 1, got "
                             f"{self.mini_batch_size}, {self.micro_batch_size}")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"learner.advantage_estimator {self.advantage_estimator!r} is not one of {sorted(ADVANTAGE_ESTIMATORS)}")
        policies = sorted(name for name, objective in OBJECTIVES.items() if "train" in objective.commands)
        if self.policy_loss not in policies:
            raise ValueError(f"learner.policy_loss {self.policy_loss!r} is not one of {policies}")
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"learner.loss_aggregation {self.loss_aggregation!r} is not one of {list(AGGREGATIONS)}")
        if self.loss_aggregation == "seq_mean_token_sum_norm" and not (self.loss_scale_tokens or 0) > 0:
            raise ValueError("learner.loss_aggregation=seq_mean_token_sum_norm divides by a constant: set "
                             "learner.loss_scale_tokens (Dr.GRPO: the generation budget, rollout.max_tokens)")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"learner.kl_estimator {self.kl_estimator!r} is not one of {list(KL_ESTIMATORS)}")
        if self.credit not in CREDIT:
            raise ValueError(f"learner.credit {self.credit!r} is not one of {sorted(CREDIT)}")
        if self.learning_rate < 0 or self.kl_coef < 0:
            raise ValueError("learner.learning_rate and learner.kl_coef must be >= 0")
        if not self.kl_in_reward_coef >= 0:
            raise ValueError(f"learner.kl_in_reward_coef must be >= 0 (0: off), got {self.kl_in_reward_coef}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ValueError(f"learner.tis_cap must be > 0 (or null: off), got {self.tis_cap}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"learner.correction {self.correction!r} is not one of {', '.join(CORRECTIONS)}")
        if (self.policy_loss == "dpo") != (self.credit == "best_worst"):
            raise ValueError("learner.policy_loss=dpo trains the pairs that learner.credit=best_worst makes, and only "
                             f"those: set both or neither, got policy_loss={self.policy_loss}, credit={self.credit}")
        # dpo's reference term is its own (dpo_beta) and it reads no vLLM logprobs: these would be ignored.
        if self.policy_loss == "dpo" and (self.kl_coef or self.kl_in_reward_coef or self.tis_cap is not None
                                          or self.mask_truncated):
            raise ValueError("learner.kl_coef, kl_in_reward_coef, tis_cap and mask_truncated do not apply to "
                             "learner.policy_loss=dpo (its reference term is learner.dpo_beta, its pairs are whole "
                             f"responses): set 0, 0, null and false, got {self.kl_coef}, {self.kl_in_reward_coef}, "
                             f"{self.tis_cap}, {self.mask_truncated}")
        if self.policy_loss == "dpo" and self.correction in ("tis", "decoupled"):
            raise ValueError(f"learner.correction={self.correction} weighs tokens by vLLM's logprobs, which "
                             "learner.policy_loss=dpo does not read: set learner.correction to auto or none")
        if not self.dpo_beta > 0 or not 0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError(f"learner.dpo_beta must be > 0 and learner.dpo_label_smoothing in [0, 0.5), got "
                             f"{self.dpo_beta}, {self.dpo_label_smoothing}")
