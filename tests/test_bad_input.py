"""Every command against a table of bad inputs: exit code 2, one `motif:` line naming the input and nothing else
on stderr, no traceback, in seconds (nothing here may start Ray; the sampling settings vLLM refuses are checked
once a worker is up, in tests/test_preflight.py). New inputs and commands join the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

SMOKE = "tests/configs/smoke.yaml"
FAST_S = 60  # generous for a loaded CI machine; each case takes a few seconds alone


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_model):
    """Bad inputs on disk, by name; `tiny` is a real model folder for checks that need one."""
    root = tmp_path_factory.mktemp("bad")
    (root / "not-a-model").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text('{"model_type": "qwen2",')
    (root / "corrupt" / "model.safetensors").write_bytes(b"")
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text(" \n\n\t\n")
    (root / "not-json.jsonl").write_text("question: 1+1? answer: 2\n")
    (root / "wrong-fields.jsonl").write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    (root / "a-file").write_text("")
    (root / "broken.yaml").write_text("model:\n  path: tiny\n   data: x\n")
    (root / "no-checkpoint").mkdir()
    for name, rank in (("adapter-rank-16", 16), ("adapter-other-base", 8)):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    from safetensors.numpy import save_file
    import numpy as np

    # q_proj of the tiny model is (128, 128); this adapter was trained on a model of hidden size 64.
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((8, 64), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 8), np.float32)},
              str(root / "adapter-other-base" / "adapter_model.safetensors"))
    return {"root": root, "tiny": tiny_model}


TRAIN = ["train", "--config", SMOKE]
EVAL = ["eval", "--config", SMOKE, "eval.limit=2", "eval.n=1"]
SFT = ["sft", "data.path={root}/sft.jsonl"]
SERVE = ["serve", "--config", SMOKE]
CASES = {
    # command line (with {root} / {tiny} / {out}), what the one line must name
    "train, missing model": (TRAIN + ["model.path=/nonexistent-model"], "model.path /nonexistent-model: no such folder"),
    "train, a folder that is not a model": (TRAIN + ["model.path={root}/not-a-model"], "no config.json"),
    "train, corrupt config.json": (TRAIN + ["model.path={root}/corrupt"], "config.json is not valid JSON"),
    "train, dataset with wrong fields": (TRAIN + ["data.path=gsm8k", "data.question_field=nosuch"], "'nosuch'"),
    "train, empty dataset": (TRAIN + ["data.path={root}/empty.jsonl"], "data.path {root}/empty.jsonl: no rows"),
    "train, blank dataset": (TRAIN + ["data.path={root}/blank.jsonl"], "data.path {root}/blank.jsonl: no rows"),
    "train, empty held-out set": (TRAIN + ["eval.every=2", "eval.path={root}/empty.jsonl"],
                                  "eval.path {root}/empty.jsonl: no rows"),
    "train, unknown held-out split": (TRAIN + ["eval.every=2", "eval.split=validation"], "eval.split validation"),
    "train, YAML syntax error": (["train", "--config", "{root}/broken.yaml"],
                                 "config file {root}/broken.yaml is not valid YAML: line 3, column 8: mapping values"),
    "train, non-JSON line": (TRAIN + ["data.path={root}/not-json.jsonl"], "invalid JSON"),
    "train, unwritable output folder": (TRAIN + ["output_dir={root}/a-file/run"], "output_dir {root}/a-file/run: cannot write"),
    "train, resume target not a checkpoint": (TRAIN + ["--resume", "{root}/no-checkpoint"], "--resume {root}/no-checkpoint"),
    # overrides on both sides of an option: the one after --resume must apply
    "train, overrides around an option": (TRAIN + ["steps=1", "--resume", "auto", "model.path=/nowhere"], "model.path /nowhere"),
    "eval, missing model": (EVAL + ["model.path=/nonexistent-model"], "model.path /nonexistent-model"),
    "eval, dataset with wrong fields": (EVAL + ["eval.path={root}/wrong-fields.jsonl"], "missing or empty 'question'"),
    "eval, empty dataset": (EVAL + ["eval.path={root}/empty.jsonl"], "eval.path {root}/empty.jsonl: no rows"),
    "eval, blank dataset": (EVAL + ["eval.path={root}/blank.jsonl"], "eval.path {root}/blank.jsonl: no rows"),
    "eval, missing dataset": (EVAL + ["eval.path={root}/nowhere.jsonl"], "eval.path {root}/nowhere.jsonl: no such file"),
    "eval, unknown split": (EVAL + ["eval.split=validation"], "eval.split validation: dataset gsm8k has splits"),
    "eval, YAML syntax error": (["eval", "--config", "{root}/broken.yaml"], "{root}/broken.yaml is not valid YAML: line 3"),
    "eval, missing adapter": (EVAL + ["eval.adapter={root}/no-adapter"], "eval.adapter {root}/no-adapter: no such folder"),
    "eval, adapter of another rank": (EVAL + ["model.path={tiny}", "eval.adapter={root}/adapter-rank-16"],
                                      "LoRA rank 16"),
    "eval, adapter of another base model": (EVAL + ["model.path={tiny}", "eval.adapter={root}/adapter-other-base"],
                                            "another base model"),
    "eval, unwritable output folder": (EVAL + ["eval.output_dir={root}/a-file/eval"], "eval.output_dir"),
    "serve, missing model": (SERVE + ["model.path=/nonexistent-model"], "model.path /nonexistent-model"),
    "serve, missing adapter": (SERVE + ["eval.adapter={root}/no-adapter"], "eval.adapter {root}/no-adapter: no such folder"),
    "serve, adapter of another rank": (SERVE + ["model.path={tiny}", "eval.adapter={root}/adapter-rank-16"],
                                       "LoRA rank 16"),
    "serve, beyond loopback without a key": (SERVE + ["--host", "0.0.0.0"],
                                             "motif serve --host 0.0.0.0: beyond loopback every request needs a key; "
                                             "pass --api-key or set MOTIF_API_KEY"),
    "sft, missing model": (["sft", "data.path={root}/wrong-fields.jsonl", "model.path=/nonexistent-model"],
                           "model.path /nonexistent-model"),
    "sft, corrupt config.json": (["sft", "data.path={root}/wrong-fields.jsonl", "model.path={root}/corrupt"],
                                 "config.json is not valid JSON"),
    "sft, missing dataset": (["sft", "data.path={root}/nowhere.jsonl", "model.path={tiny}"], "data.path {root}/nowhere.jsonl"),
    "sft, empty dataset": (["sft", "data.path={root}/empty.jsonl", "model.path={tiny}", "output_dir={out}"],
                           "data.path {root}/empty.jsonl: no rows"),
    "sft, blank dataset": (["sft", "data.path={root}/blank.jsonl", "model.path={tiny}", "output_dir={out}"],
                           "data.path {root}/blank.jsonl: no rows"),
    "sft, YAML syntax error": (["sft", "--config", "{root}/broken.yaml"], "{root}/broken.yaml is not valid YAML: line 3"),
    "sft, dataset with wrong fields": (["sft", "data.path={root}/wrong-fields.jsonl", "model.path={tiny}",
                                        "output_dir={out}"], "no usable SFT rows"),
    "sft, non-JSON line": (["sft", "data.path={root}/not-json.jsonl", "model.path={tiny}", "output_dir={out}"],
                           "invalid JSON"),
    "sft, unwritable output folder": (["sft", "data.path={root}/wrong-fields.jsonl", "model.path={tiny}",
                                       "output_dir={root}/a-file/sft"], "output_dir {root}/a-file/sft"),
    "dpo, missing dataset": (["dpo", "data.path={root}/nowhere.jsonl", "model.path={tiny}"],
                             "data.path {root}/nowhere.jsonl"),
    "dpo, dataset with wrong fields": (["dpo", "data.path={root}/wrong-fields.jsonl", "model.path={tiny}",
                                        "output_dir={out}"], "no usable DPO rows"),
    "dpo, full fine-tuning": (["dpo", "data.path={root}/wrong-fields.jsonl", "learner.finetune=full"],
                              "learner.finetune must be lora for dpo"),
    "dpo, several ranks": (["dpo", "data.path={root}/wrong-fields.jsonl", "learner.num_ranks=2"],
                           "learner.num_ranks must be 1 here"),
    "report, missing run folder": (["report", "{root}/no-run"], "{root}/no-run"),
    "misspelt command": (["trian"], "did you mean train"),
    "misspelt option": (["train", "--resme", "auto"], "did you mean --resume"),
    "misspelt config key": (TRAIN + ["rollout.rouds=3"], "did you mean rounds"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_fast_in_one_line(case, bad, tmp_path):
    argv, expected = CASES[case]
    values = {"root": bad["root"], "tiny": bad["tiny"], "out": tmp_path / "out"}
    argv = [a.format(**values) for a in argv]
    if argv[0] in ("train", "eval") and not any(a.startswith("output_dir=") for a in argv):
        argv.append(f"output_dir={tmp_path / 'run'}")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cluster.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "MOTIF_API_KEY": ""}, timeout=300)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    lines = done.stderr.splitlines()
    if lines and lines[0].startswith("usage: "):
        lines = lines[-1:]  # argparse's own errors come after the usage, by convention
    assert done.returncode == 2, output[-3000:]
    assert len(lines) == 1 and lines[0].startswith("motif") and expected.format(**values) in lines[0], output[-3000:]
    assert "Traceback" not in output
    assert elapsed < FAST_S, f"took {elapsed:.0f} s"
    assert not (tmp_path / "run" / "checkpoints").exists()
