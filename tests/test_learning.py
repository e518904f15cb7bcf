"""It learns: the toy-task warm start (SFT through the DeepSpeed learner) is served token-exactly by vLLM,
and a short GRPO run from it raises held-out accuracy, judged by the grader on held-out questions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.config import load_config
from tests.conftest import REPO

DEMO = "cluster/configs/demo.yaml"


@pytest.fixture(scope="session")
def warm_start(demo_warm_start):
    return demo_warm_start


def test_sft_model_greedy_output_under_vllm_equals_hf(ray_session, warm_start):
    import torch
    from transformers import AutoModelForCausalLM

    from cluster.tasks.toy_task import toy_problems
    from rewards import FORMATS
    from rollout.actor import RolloutWorker
    from rollout.protocols import conversation
    from rollout.protocols.motif import SYSTEM_PROMPT, first_round_message
    from rollout.records import SamplingSpec

    model_path, _ = warm_start
    worker = RolloutWorker.options(num_cpus=1).remote(model_path, max_lora_rank=8, max_model_len=512,
                                                      kv_cache_bytes=32 << 20, dtype="float32")
    problems = toy_problems(load_config(DEMO).data.toy, "test", 6)
    conversations = [conversation(first_round_message(p.question, 3), SYSTEM_PROMPT) for p in problems]
    served = [g[0] for g in ray_session.get(worker.generate.remote(conversations, SamplingSpec(temperature=0.0, max_tokens=40)))]
    ray_session.kill(worker)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        for c in served:
            out = model.generate(torch.tensor([c.prompt_ids]), max_new_tokens=40, do_sample=False)
            assert out[0, len(c.prompt_ids):].tolist() == c.completion_ids
    # The warm start learned the protocol: round-1 answers have the intermediate round's shape.
    assert sum(FORMATS["reasoning_progress"](c.text) for c in served) >= 5, [c.text for c in served]


def test_grpo_from_the_warm_start_raises_held_out_accuracy(warm_start, tmp_path):
    _, cache = warm_start
    steps = 25
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", DEMO, f"model.warm_start.dir={cache}",
           f"output_dir={run_dir}", f"steps={steps}", f"eval.every={steps}", "eval.n=8",
           "eval.limit=64", "eval.temperature=1.0"]  # 40 steps, 2026-12-01: 0.639 -> 0.813; 25 keep the suite short
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    evals = {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "eval/pass@1" in m}
    before, after = evals[0]["eval/pass@1"], evals[steps]["eval/pass@1"]
    assert evals[0]["eval/samples"] == 64 * 8
    assert after >= before + 0.05, (before, after)
    assert "held-out pass@1:" in proc.stdout + proc.stderr
