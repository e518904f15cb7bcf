"""A tiny untrained reward model for the reward-model tests (test-only: the product never builds one)."""

from __future__ import annotations

from pathlib import Path

from learner.tiny_model import _save, _tiny_config, build_tokenizer


def build_tiny_reward_model(path: str | Path, seed: int = 0, hidden_size: int = 128, layers: int = 2) -> Path:
    """Write an untrained tiny Qwen2 sequence-classification reward model (one score) + tokenizer to `path`."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(_tiny_config(tokenizer, hidden_size, layers, num_labels=1))
    return _save(model.to(torch.float32), tokenizer, path)
