"""DPO (`motif dpo`): the loss is the closed form on fixed logprobs; the planner never splits a pair, in any
micro-batch size or rank split; one real step on the tiny model raises the chosen completion's margin over the
rejected one, measured afterwards with HF + PEFT, and malformed rows are skipped and counted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from learner.batching import plan_batch
from learner.objectives.aggregation import MiniBatchSize
from learner.objectives.dpo import dpo_loss
from learner.records import PreferencePair
from tests.conftest import REPO

# Three pairs, rows chosen then rejected, of 3, 1, 2, 4, 4 and 2 completion tokens (the rest is padding).
LENGTHS = [3, 1, 2, 4, 4, 2]
GEN = torch.Generator().manual_seed(0)
LOGP = -torch.rand(6, 4, generator=GEN, dtype=torch.float64) * 3
REF = -torch.rand(6, 4, generator=GEN, dtype=torch.float64) * 3
MASK = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in LENGTHS], dtype=torch.float64)
REF = REF * MASK  # the learner's reference table is zero off the completion
SIZE = MiniBatchSize(tokens=sum(LENGTHS), sequences=6)


def closed_form(beta: float, smoothing: float) -> tuple[float, dict[str, float]]:
    """Written out from the definitions, pair by pair, in float64."""
    def logp(table, row):
        return sum(float(table[row, t]) for t in range(LENGTHS[row]))

    losses, sides = [], []
    for pair in range(3):
        c, r = 2 * pair, 2 * pair + 1
        reward_c, reward_r = beta * (logp(LOGP, c) - logp(REF, c)), beta * (logp(LOGP, r) - logp(REF, r))
        h = reward_c - reward_r
        log_sigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
        losses.append(-(1 - smoothing) * log_sigmoid(h) - smoothing * log_sigmoid(-h))
        sides.append((reward_c, reward_r, logp(LOGP, c), logp(LOGP, r)))
    means = {"dpo/reward_chosen": sum(s[0] for s in sides) / 3, "dpo/reward_rejected": sum(s[1] for s in sides) / 3,
             "dpo/reward_margin": sum(s[0] - s[1] for s in sides) / 3,
             "dpo/reward_accuracy": sum(s[0] > s[1] for s in sides) / 3,
             "dpo/logp_chosen": sum(s[2] for s in sides) / 3, "dpo/logp_rejected": sum(s[3] for s in sides) / 3}
    return sum(losses) / 3, means


@pytest.mark.parametrize("beta,smoothing", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_loss_is_the_closed_form(beta, smoothing):
    loss, metrics = dpo_loss(LOGP, MASK, ref_logprobs=REF, size=SIZE, beta=beta, label_smoothing=smoothing)
    expected, means = closed_form(beta, smoothing)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # The learner divides the metric sums by the trained tokens: that gives the mean over pairs.
    assert {k: float(v) / SIZE.tokens for k, v in metrics.items()} == pytest.approx(means, rel=1e-12)
    # A micro-batch's share: pairs apart add up to the mini-batch's loss.
    parts = [dpo_loss(LOGP[i : i + 2], MASK[i : i + 2], ref_logprobs=REF[i : i + 2], size=SIZE, beta=beta,
                      label_smoothing=smoothing)[0] for i in (0, 2, 4)]
    assert float(sum(parts)) == pytest.approx(expected, rel=1e-12)


def test_dpo_refuses_rows_that_are_not_pairs():
    with pytest.raises(ValueError, match="pairs, got 3 rows"):
        dpo_loss(LOGP[:3], MASK[:3], ref_logprobs=REF[:3], size=SIZE)


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("micro_batch_size", [1, 2, 3, 4, 5, 7])
def test_the_planner_never_splits_a_pair(ranks, micro_batch_size):
    """Seven pairs of unequal lengths, two mini-batches, shuffled: every pair lies in one micro-batch of one rank,
    chosen just before rejected; no micro-batch holds more than micro_batch_size samples unless it is one pair."""
    pairs = [PreferencePair([1] * (1 + k % 3), [2] * (1 + k), [3] * (7 - k)) for k in range(7)]
    samples = [s for k, pair in enumerate(pairs) for s in pair.samples(k)]
    local, plans = plan_batch(samples, ranks, 4, micro_batch_size, shuffle_seed="s", whole_episodes=True)
    seen = []
    for part, plan in zip(local, plans):
        for micros, size in plan:
            for micro in micros:
                rows = [part[i] for i in micro]
                assert len(rows) <= max(micro_batch_size, 2) and len(rows) % 2 == 0
                for chosen, rejected in zip(rows[::2], rows[1::2]):
                    assert chosen.episode == rejected.episode and chosen.completion_ids[0] == 2
                    assert rejected.completion_ids[0] == 3
                    seen.append(chosen.episode)
            assert size.sequences % 2 == 0
    assert sorted(seen) == list(range(7))
    assert [len(plan) for plan in plans] == [2] * ranks  # ceil(7 / 4) optimizer steps, on every rank


def sequence_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    from rollout.engine import chat_prompt_ids

    prompt_ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    completion_ids = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    token_logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(token_logp[len(prompt_ids) - 1 :].sum())


def test_motif_dpo_step_raises_the_chosen_margin(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"\\boxed{{{i + 1}}}", "rejected": f"The answer is {i + 5}."}
            for i in range(4)]
    lines = [json.dumps(r) for r in rows] + [json.dumps({"prompt": "2 + 2?", "chosen": "4"}), "not json",
                                             json.dumps({"prompt": "x", "chosen": "1 " * 300, "rejected": "2"})]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "dpo"
    cmd = [sys.executable, "-m", "cluster.cli", "dpo", f"model.path={tiny_model}", f"data.path={data}",
           f"output_dir={out}", "steps=1", "max_length=128", "learner.lora_rank=8", "learner.learning_rate=1e-3",
           "learner.mini_batch_size=4", "learner.micro_batch_size=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert "4 pairs loaded; skipped 3 rows" in output and "missing or empty 'rejected'" in output
    assert "longer than max_length=128" in output
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Before the step the adapter is zero, so the policy is the reference: h = 0 for every pair.
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["dpo/reward_margin"] == pytest.approx(0.0, abs=1e-6) and metrics["optimizer_steps"] == 1

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def margins(model):
        return [sequence_logprob(model, tokenizer, r["prompt"], r["chosen"])
                - sequence_logprob(model, tokenizer, r["prompt"], r["rejected"]) for r in rows]

    before = margins(base)
    # The learner's own sequence logprobs, before its step, are HF's: its pair means come out as means.
    assert metrics["dpo/logp_chosen"] == pytest.approx(
        sum(sequence_logprob(base, tokenizer, r["prompt"], r["chosen"]) for r in rows) / 4, abs=1e-4)
    after = margins(PeftModel.from_pretrained(base, out / "adapter").eval())
    assert all(a > b for a, b in zip(after, before)), (before, after)
    card = (out / "adapter" / "README.md").read_text()  # the model card, beside the adapter PEFT just loaded
    assert "library_name: peft" in card and "direct preference optimisation" in card and "- `learner.dpo_beta`" in card
