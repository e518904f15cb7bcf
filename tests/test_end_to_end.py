"""`motif train` as a user runs it: real Ray, vLLM and DeepSpeed on the tiny model, 2 steps, with every kind
of reward component (format, accuracy, a reward model actor, a user function), the motivation prompt and
truncated importance sampling against vLLM's logprobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.conftest import REPO

USER_REWARD = '''
def brevity(sample):
    """1 minus the response's length in characters over 1000, at least 0."""
    return max(0.0, 1 - len(sample.response) / 1000)
'''


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """Every scalar of the run's TensorBoard events, read back by TensorBoard's own reader: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def jsonl_scalars(run_dir, cast=None) -> dict[str, dict[int, float]]:
    """metrics.jsonl in the same shape, at TensorBoard's float32 precision unless `cast` says otherwise."""
    import numpy as np

    cast = cast or (lambda value: float(np.float32(value)))
    table: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        for key, value in m.items():
            if key != "step" and isinstance(value, (int, float)):
                table.setdefault(key, {})[m["step"]] = cast(value)
    return table


def motif_train(tmp_path, run_dir, *overrides):
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", "tests/configs/smoke.yaml",
           f"output_dir={run_dir}", f"model.tiny_model_dir={tmp_path / 'tiny'}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_motif_train_two_steps_writes_metrics_and_adapter(tmp_path):
    from learner.tiny_model import build_tiny_reward_model

    reward_model = build_tiny_reward_model(tmp_path / "rm")
    (tmp_path / "my_rewards.py").write_text(USER_REWARD)
    components = (
        "[{name: format, weight: 0.5}, {name: accuracy}, "
        f"{{name: reward_model, model: '{reward_model}', weight: 0.1}}, "
        f"{{name: '{tmp_path / 'my_rewards.py'}:brevity', weight: 0.1}}]"
    )
    run_dir = tmp_path / "run"
    proc = motif_train(tmp_path, run_dir, f"reward.components={components}", "reward.motivation=true",
                       "learner.tis_cap=2")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert [m["adapter_version"] for m in lines] == [1, 2]
    for m in lines:
        # vLLM and the learner agree in fp32 on CPU, the base model at step 1 and the pushed adapter at step 2, so
        # truncated importance sampling weighs every token by 1 within 1e-4 and caps none.
        assert m["rollout/logprob_diff"] < 1e-4 and m["tis_capped_frac"] == 0.0
        for key in ("reward", "reward/format", "reward/accuracy", "reward/reward_model", "reward/brevity",
                    "loss", "kl", "time_rollout", "time_learn", "time_sync"):
            assert isinstance(m[key], float), key
        assert m["continuations"] == 2 * 4 * 2  # B*m*k finals
        assert m["reward/brevity/ok"] == 2 * 4  # one value per round-1 sample, none failed
        assert "reward/reward_model/batch_failed" not in m
    # samples.jsonl holds episodes turn by turn: a round-1 root and its k=2 round-2 turns below it.
    episodes = [json.loads(line) for line in (run_dir / "samples" / "step-1.jsonl").read_text().splitlines()]
    assert len(episodes) == 2 * 4
    for episode in episodes:
        turns = episode["turns"]
        assert [(t["index"], t["parent"], t["role"]) for t in turns] == \
            [(1, None, "model"), (2, 0, "model"), (2, 0, "model")]
        assert [t["temperature"] for t in turns] == [1.0, 0.8, 0.8]
        assert episode["finals"] == [t["text"] for t in turns[1:]] and turns[0]["text"] == episode["response"]
        assert "Progress so far" in turns[1]["message"] and {t["adapter_version"] for t in turns} == {0}
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not list(run_dir.rglob("*.partial"))
    output = proc.stdout + proc.stderr
    assert "step 2 |" in output
    assert "brevity (weight 0.1): 1 minus the response's length" in output  # the motivation prompt, printed
    assert (run_dir / "report.png").stat().st_size > 10_000

    # TensorBoard holds the same metrics under the same names.
    assert tensorboard_scalars(run_dir) == jsonl_scalars(run_dir)
    assert proc.stdout.rstrip().splitlines()[-1].endswith(f"tensorboard --logdir {run_dir / 'tensorboard'}")

    # A quiet console: vLLM, Ray and DeepSpeed speak in RUN_DIR/logs, not on the terminal.
    for noise in ("(RolloutWorker pid=", "(GRPOLearner pid=", "WARNING", "Started a local Ray instance"):
        assert noise not in output, noise
    logs = run_dir / "logs"
    assert "Loading safetensors checkpoint shards" in (logs / "rollout-0.log").read_text()
    assert "Setting accelerator to CPU" in (logs / "learner-0.log").read_text()


def test_a_step_whose_prompts_are_all_too_long_is_skipped_not_fatal(tmp_path):
    run_dir = tmp_path / "run"
    proc = motif_train(tmp_path, run_dir, "rollout.max_model_len=64", "rollout.max_tokens=8")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["skipped_step"] == 1.0 and m["prompts_too_long"] > 0 and m["adapter_version"] == 0 for m in lines)
    assert "skipped, all 2 prompts exceed rollout.max_model_len" in proc.stdout + proc.stderr


def test_eval_during_training_logs_held_out_metrics(tmp_path):
    run_dir = tmp_path / "run"
    motif_train(tmp_path, run_dir, "eval.every=2", "eval.limit=3", "eval.n=2", "steps=2")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2]
    for m in (lines[0], lines[2]):  # step 0 and the last step
        assert 0 <= m["eval/pass@1"] <= m["eval/pass@2"] <= 1 and m["eval/samples"] == 6
    assert "eval/pass@1" not in lines[1]
    assert len((run_dir / "eval" / "step-2" / "samples.jsonl").read_text().splitlines()) == 6

    # The adapter is shared as PEFT adapters are: a model card naming its base model and its held-out results,
    # and it loads with PEFT.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    card = (run_dir / "adapter" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and {"motif-rl", "motif", "lora"} <= set(front["tags"])
    for step in (0, 2):
        m = lines[step]
        assert f"| {step} | {m['eval/pass@1']:.3f} | {m['eval/pass@1_lo']:.3f} - {m['eval/pass@1_hi']:.3f} | 6 |" in card
    assert "- `rollout.rounds`: 2" in card and "max_attempts" not in card
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(front["base_model"], dtype=torch.float32),
                                      str(run_dir / "adapter"))
    assert model.peft_config["default"].r == 8
