"""`motif sft` as a user runs it: LoRA SFT of the tiny model on a JSONL with a bad row; the merged model
folder loads with from_pretrained and differs from the base where it was trained; under partitioned ZeRO-3 it
equals the ZeRO-0 export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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
    # The model card: the base model it came from, the method, no held-out results (none were run).
    card = (out / "model" / "README.md").read_text()
    assert f"base_model: {tiny_model}" in card and "supervised fine-tuning" in card
    assert "Not evaluated during the run" in card and "library_name" not in card


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_export_under_partitioned_zero3_equals_zero0(tmp_path, tiny_model, finetune):
    """Under ZeRO-3 a partitioned parameter holds an empty tensor: the export gathers them first. Every tensor
    is partitioned here (persistence threshold 0); the exported model equals the ZeRO-0 one to float rounding."""
    import torch
    from transformers import AutoModelForCausalLM

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
                                        "response": f"\\boxed{{{i + 1}}}"}) + "\n" for i in range(8)))

    def export(stage: int) -> dict:
        out = tmp_path / f"zero{stage}"
        cmd = [sys.executable, "-m", "cluster.cli", "sft", f"model.path={tiny_model}", f"data.path={data}",
               f"output_dir={out}", "steps=3", f"learner.finetune={finetune}", "learner.lora_rank=8",
               f"learner.zero_stage={stage}", "learner.zero3_param_persistence_threshold=0",
               "learner.warmup_steps=0", "learner.learning_rate=1e-2", "learner.mini_batch_size=4",
               "learner.micro_batch_size=4"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-4000:]
        return AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).state_dict()

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    zero0, zero3 = export(0), export(3)
    assert {k: v.shape for k, v in zero3.items()} == {k: v.shape for k, v in base.items()}
    update = max((zero0[k] - base[k]).abs().max().item() for k in base)
    assert update > 1e-3
    assert max((zero3[k] - zero0[k]).abs().max().item() for k in base) < 1e-2 * update
