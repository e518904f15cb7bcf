"""What the DeepSpeed engine is built with: its config and the learning-rate schedule."""

from __future__ import annotations

from learner.config import LearnerConfig


def lr_schedule(config: LearnerConfig):
    """Multiplier of the learning rate at optimizer step s: linear warm-up over warmup_steps (step 0 already
    trains), then linear decay to 0 at decay_steps; constant when decay_steps is 0."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if not config.decay_steps:
            return warm
        return warm * max(0.0, (config.decay_steps - step) / (config.decay_steps - config.warmup_steps)) \
            if step >= config.warmup_steps else warm

    return factor


def deepspeed_config(config: LearnerConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        # Accumulation boundaries are set explicitly per mini-batch (its size can vary when prompts are
        # skipped), so DeepSpeed's own counter stays at 1.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": {"stage": config.zero_stage,
                              "stage3_param_persistence_threshold": config.zero3_param_persistence_threshold},
        "bf16": {"enabled": bf16},
        # torch's AdamW: avoids JIT-compiling DeepSpeed's fused Adam op (minutes on a small CPU machine).
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": config.learning_rate, "weight_decay": config.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
