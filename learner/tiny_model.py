"""Build a tiny Qwen2 causal LM and a byte-level BPE tokenizer offline.

No model hub is reachable on CPU machines, so tests and the demo build a small model from scratch and save
it with `save_pretrained`; everything downstream loads it through `from_pretrained(path)` exactly as it would
load a hub id.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rollout.common import replace_directory

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Enough text for BPE merges that cover the prompt vocabulary; the model itself is random.
_CORPUS = [
    "<reasoning> </reasoning> <progress> </progress> <answer> </answer> \\boxed{",
    "Question: How many apples does she have left? The answer is 42.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "This is round 1 of 3. Reason step by step, then summarise your progress.",
    "Progress so far: she had 12 apples and gave away 5, so 7 remain. Final answer: \\boxed{7}",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) $ % .",
    "system user assistant You are a helpful assistant that reasons in rounds.",
]


def build_tokenizer(vocab_size: int = 512, extra_corpus: Sequence[str] = ()):
    """A byte-level BPE tokenizer whose merges come from a small built-in corpus plus `extra_corpus` (the
    texts a task's prompts and answers are made of, so they take few tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def _tiny_config(tokenizer, hidden_size: int, layers: int, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=512,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # A wide init spreads the logits, so greedy decoding has no near-ties that fp32 rounding
        # differences between HF and vLLM could flip.
        initializer_range=0.1,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **extra,
    )


def _save(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_model(
    path: str | Path, seed: int = 0, hidden_size: int = 128, layers: int = 2, extra_corpus: Sequence[str] = ()
) -> Path:
    """Write a tiny Qwen2 model + tokenizer to `path` and return it.

    head_dim = hidden_size / 4 heads must be >= 32 for vLLM's CPU attention backend.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    tokenizer = build_tokenizer(extra_corpus=extra_corpus)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_tiny_config(tokenizer, hidden_size, layers)).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return _save(model, tokenizer, path)


def build_tiny_reward_model(path: str | Path, seed: int = 0, hidden_size: int = 128, layers: int = 2,
                            extra_corpus: Sequence[str] = ()) -> Path:
    """Write an untrained tiny Qwen2 sequence-classification reward model (one score) + tokenizer to `path`."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    tokenizer = build_tokenizer(extra_corpus=extra_corpus)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(_tiny_config(tokenizer, hidden_size, layers, num_labels=1))
    return _save(model.to(torch.float32), tokenizer, path)


def ensure_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny model at `path` unless a complete one is already there."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    return replace_directory(path, lambda staging: build_tiny_model(staging, seed=seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline Qwen2 model used by tests and the demo.")
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.path, seed=args.seed))


if __name__ == "__main__":
    main()
