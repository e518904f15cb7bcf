"""Rollout pool overhead and adapter push cost.

    python -m cluster.bench.rollout [--prompts 64 --n 4 --max-tokens 64 --repeats 3 --steps 4]

1. The same requests through bare vLLM (an `LLM` in a Ray actor, token prompts, one `generate`) and through the
   rollout pool with 1 and 2 workers: tokens/s and the pool's share of bare throughput.
2. A short `motif train` (the tiny model, GSM8K prompts, MOTIF with 2 rounds): time spent pushing the adapter as a share of step time.

Prints a JSON line and a short table; compare figures from one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray

# The tiny model on GSM8K prompts, MOTIF with 2 rounds (as tests/configs/smoke.yaml, which a wheel lacks).
SMALL_RUN = ["model.path=tiny", "data.path=gsm8k", "data.limit=16", "rollout.prompts_per_step=2",
             "rollout.samples_per_prompt=4", "rollout.continuations=2", "rollout.rounds=2", "rollout.max_tokens=48",
             "rollout.dtype=float32", "learner.lora_rank=8", "learner.lora_alpha=16", "learner.mini_batch_size=8",
             "learner.micro_batch_size=4", "learner.kl_coef=0.01", "learner.credit=first_round"]
ENGINE = {"max_model_len": 512, "dtype": "float32", "seed": 0, "enforce_eager": True}


@ray.remote
class BareVLLM:
    def __init__(self, model: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=model, kv_cache_memory_bytes=64 << 20, **ENGINE)

    def generate(self, prompt_ids: list[list[int]], n: int, max_tokens: int) -> int:
        from vllm import SamplingParams, TokensPrompt

        # What a rollout request asks for: the sampled tokens' logprobs too.
        params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, logprobs=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outputs for o in out.outputs)


def workload(model: str, prompts: int, repeats: int):
    """Fresh questions for every call (the warm-up and each repeat), as in training: no call finds its prompts
    in the prefix cache of an earlier one."""
    from transformers import AutoTokenizer

    from rollout.engine import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(model)
    calls = []
    for call in range(repeats + 1):
        conversations = [[{"role": "user", "content": f"Question {call}.{i}: what is {i} times {call + 3}? Think."}]
                         for i in range(prompts)]
        calls.append((conversations, [chat_prompt_ids(tokenizer, c) for c in conversations]))
    return calls


def timed(call, repeats: int) -> float:
    call(0)  # warm-up
    start, tokens = time.perf_counter(), 0
    for r in range(1, repeats + 1):
        tokens += call(r)
    return tokens / (time.perf_counter() - start)


def pool_throughput(model: str, workers: int, calls, spec, repeats: int) -> float:
    from cluster.config import load_config
    from cluster.workers import start_rollout_pool

    config = load_config(None, SMALL_RUN + [f"rollout.num_workers={workers}", "rollout.kv_cache_mb=64",
                                                               f"rollout.max_model_len={ENGINE['max_model_len']}"])
    pool = start_rollout_pool(config, model)
    pool.wait_ready(600)

    def call(r: int) -> int:
        pool.begin("bench", r)
        return sum(len(c.completion_ids) for group in pool.generate(calls[r][0], spec) for c in group)

    rate = timed(call, repeats)
    pool.shutdown()
    return rate


def push_share(steps: int) -> dict:
    from cluster.config import load_config
    from cluster.loop.train import train

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, SMALL_RUN + [f"steps={steps}", f"output_dir={tmp}/run",
                                                                   f"model.tiny_model_dir={tmp}/tiny"])
        run_dir = train(config)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]  # warm step out
    phases = ("time_rollout", "time_reward", "time_learn", "time_sync")
    step_s = sum(sum(m[p] for p in phases) for m in lines) / len(lines)
    sync_s = sum(m["time_sync"] for m in lines) / len(lines)
    return {"push_s": sync_s, "step_s": step_s, "push_share": sync_s / step_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from learner.tiny_model import build_tiny_model
    from rollout.records import SamplingSpec

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "model"))
        calls = workload(model, args.prompts, args.repeats)
        cores = os.cpu_count() or 1  # what the pool gives a single worker
        env = {"OMP_NUM_THREADS": str(cores), "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}"}
        bare = BareVLLM.options(num_cpus=1, runtime_env={"env_vars": env}).remote(model)
        bare_rate = timed(lambda r: ray.get(bare.generate.remote(calls[r][1], args.n, args.max_tokens)), args.repeats)
        ray.kill(bare)
        spec = SamplingSpec(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
        pool_rates = {w: pool_throughput(model, w, calls, spec, args.repeats) for w in (1, 2)}
    ray.shutdown()
    result = {
        "requests": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
        "bare_tokens_per_s": bare_rate, "pool1_tokens_per_s": pool_rates[1], "pool2_tokens_per_s": pool_rates[2],
        "pool1_vs_bare": pool_rates[1] / bare_rate, "pool2_vs_pool1": pool_rates[2] / pool_rates[1],
        **push_share(args.steps),
    }
    print(json.dumps(result))
    print(f"{'engine':<16}{'tokens/s':>10}{'vs bare':>10}")
    for name, rate in (("bare vLLM", bare_rate), ("pool, 1 worker", pool_rates[1]), ("pool, 2 workers", pool_rates[2])):
        print(f"{name:<16}{rate:>10.0f}{rate / bare_rate:>10.2f}")
    print(f"adapter push: {result['push_s'] * 1000:.0f} ms of a {result['step_s']:.2f} s step "
          f"({100 * result['push_share']:.1f}%)")


if __name__ == "__main__":
    main()
