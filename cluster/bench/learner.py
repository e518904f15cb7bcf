"""Learner throughput: GRPO train_step tokens/s on a random Qwen2-shaped model with a LoRA adapter.

    python -m cluster.bench.learner [--hidden 256 --layers 4 --vocab 32768 --rank 16 --samples 32 --mini 32]
    python -m cluster.bench.learner --hidden 2048 --layers 36 --heads 16 --vocab 151936 --rank 64   # Qwen2.5-3B-shaped, GPU

Two cases: the batch as one mini-batch (on-policy) and as two (the old-logprob pass is needed). Prints a JSON
line and a short table; compare runs made side by side (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def build_model(path: Path, hidden: int, layers: int, vocab: int, heads: int) -> str:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from learner.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 5.4) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 8),
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-recompute", action="store_true", help="learner.logprob_recompute=false")
    args = parser.parse_args(argv)

    import random

    from learner.actor import GRPOLearner
    from learner.config import LearnerConfig
    from learner.records import TrainSample

    rng = random.Random(0)
    samples = [
        TrainSample([rng.randrange(args.vocab) for _ in range(args.prompt_tokens)],
                    [rng.randrange(args.vocab) for _ in range(args.completion_tokens)], rng.gauss(0, 1))
        for _ in range(args.samples)
    ]
    tokens = args.samples * args.completion_tokens
    results = {"model": {k: getattr(args, k) for k in ("hidden", "layers", "vocab", "rank")}, "tokens": tokens,
               "logprob_recompute": not args.no_recompute}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", args.hidden, args.layers, args.vocab, args.heads)
        for name, mini in (("one_mini_batch", args.samples), ("two_mini_batches", args.samples // 2)):
            config = LearnerConfig(lora_rank=args.rank, lora_alpha=2 * args.rank, learning_rate=1e-6,
                                   mini_batch_size=mini, micro_batch_size=args.micro,
                                   logprob_recompute=not args.no_recompute)
            learner = GRPOLearner(model, config)
            learner.train_step(samples)  # warm-up: allocations, first-call overheads
            start = time.perf_counter()
            for _ in range(args.repeats):
                learner.train_step(samples)
            results[f"{name}_tokens_per_s"] = tokens * args.repeats / (time.perf_counter() - start)
            del learner
    print(json.dumps(results))
    print(f"{'case':<20}{'train tokens/s':>16}")
    for name in ("one_mini_batch", "two_mini_batches"):
        print(f"{name:<20}{results[f'{name}_tokens_per_s']:>16.0f}")


if __name__ == "__main__":
    main()
