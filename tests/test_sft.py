"""`motif sft` as a user runs it: LoRA SFT of the tiny model on a JSONL with a bad row; the merged model
folder loads with from_pretrained and differs from the base where it was trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_motif_sft_lora_writes_a_merged_model(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "response": f"\\boxed{{{i + 1}}}"}
            for i in range(6)]
    lines = [json.dumps(r) for r in rows] + ['{"prompt": 3, "response": "x"}', "not json",
                                             json.dumps({"prompt": "a plain user message", "response": "ok"})]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "cluster.cli", "sft", f"model.path={tiny_model}", f"data.path={data}",
           f"output_dir={out}", "steps=4", "learner.finetune=lora", "learner.lora_rank=8",
           "learner.learning_rate=1e-2", "learner.mini_batch_size=4", "learner.micro_batch_size=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert "7 rows loaded; skipped 2 rows" in output and "row 6: " in output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and metrics[-1]["loss"] < metrics[0]["loss"]

    merged = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not any("lora" in name for name in merged.state_dict())
    delta = merged.model.layers[0].self_attn.q_proj.weight - base.model.layers[0].self_attn.q_proj.weight
    assert delta.abs().max() > 1e-4  # LoRA merged into a targeted weight
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # untargeted: unchanged
    assert (out / "model" / "tokenizer.json").exists() and not list(out.glob("*.partial"))
