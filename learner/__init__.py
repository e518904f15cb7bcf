"""Learner: LoRA policy, GRPO losses, the DeepSpeed engine and the Ray learner actor."""
