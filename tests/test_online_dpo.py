"""On-policy DPO in `motif train` (learner.policy_loss=dpo, learner.credit=best_worst): per prompt, the best of
the policy's own samples under the configured rewards against the worst. The credit on scripted episodes picks
exactly the pairs written out by hand; a step on stand-ins counts the tied groups and says why it trained
nothing; the config refuses the halves apart; a real 2-step run trains, pushes, checkpoints and evaluates, and
HF + PEFT find the chosen completion's margin over the rejected one raised by the step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from cluster.config import ConfigError, load_config
from learner.credit import CREDIT
from rollout.records import Completion, Episode, Turn
from tests.conftest import REPO


def episode(prompt: int, sample: int, completion_ids: list[int]) -> Episode:
    """A one-turn episode whose ids name it: prompt ids [prompt], completion ids as given."""
    completion = Completion([prompt], completion_ids, "text", [0.0] * len(completion_ids), "stop", 1)
    return Episode(prompt, [Turn(completion, "q", 1, None, 0.7)])


def test_best_worst_pairs_the_best_with_the_worst_of_each_group():
    """Episodes of four prompts, interleaved. Prompt 0: rewards 0.5, 1.5, 1.5, -1, -1: the chosen is the first
    1.5 (sample 1), the rejected the first -1 (sample 3). Prompt 1: all 0.7, tied. Prompt 2: one episode, tied.
    Prompt 3: its best root had no completion (prompt too long) and is left out: 0.2 against 0.1."""
    script = [(0, 0, 0.5), (1, 0, 0.7), (0, 1, 1.5), (3, 0, 9.0), (0, 2, 1.5), (1, 1, 0.7), (2, 0, 3.0),
              (0, 3, -1.0), (3, 1, 0.1), (0, 4, -1.0), (3, 2, 0.2)]
    episodes = [episode(p, s, [] if (p, s) == (3, 0) else [100 * p + s]) for p, s, _ in script]
    rewards = [r for _, _, r in script]
    counts: dict = {}
    samples = CREDIT["best_worst"](episodes, [0.0] * len(episodes), rewards=rewards, counts=counts)
    assert [(s.prompt_ids, s.completion_ids, s.episode) for s in samples] == [
        ([0], [1], 0), ([0], [3], 0),  # chosen first, then rejected; the pair is one episode
        ([3], [302], 3), ([3], [301], 3)]
    assert counts == {"tied_groups": 2, "pairs": 2}
    # Scored at temperature 1 (the model itself, not the 0.7 sampled at); dpo reads no advantage or vLLM logprobs.
    assert all(s.temperature == 1.0 and s.advantage == 0.0 and s.behaviour_logprobs is None for s in samples)
    # Ties go by sampling order: reversing the episodes reverses which of equals is picked.
    reversed_counts: dict = {}
    flipped = CREDIT["best_worst"](episodes[::-1], [0.0] * len(episodes), rewards=rewards[::-1],
                                   counts=reversed_counts)
    assert [s.completion_ids for s in flipped] == [[302], [301], [2], [4]] and reversed_counts == counts


def test_a_step_counts_tied_groups_and_says_why_it_trained_nothing(tmp_path):
    """On the scripted pool of the dynamic-sampling tests ("mixed": half well formed, "alike": all well formed,
    under a format reward): a mixed group gives one pair, an alike one is counted as tied; a step of alike groups
    alone trains nothing and names the credit's counts; dynamic sampling refills tied groups away."""
    from cluster.loop.step import StepParts, run_step
    from cluster.spec import rollout_spec
    from learner.advantages import ADVANTAGE_ESTIMATORS
    from rewards import RewardTerm, build_rewards
    from rollout.protocols import PROTOCOLS
    from tests.test_dynamic_sampling import Learner, ScriptedPool, problems

    def step(folder, batch, *overrides):
        config = load_config("tests/configs/smoke.yaml", [
            "rollout.rounds=1", "learner.credit=best_worst", "learner.policy_loss=dpo", "learner.kl_coef=0",
            "rollout.prompts_per_step=2", *overrides])
        rewards = build_rewards([RewardTerm("format")], "reasoning_answer")
        learner = Learner()
        parts = StepParts(config, ScriptedPool(), learner, PROTOCOLS["single"], rollout_spec(config, rewards),
                          rewards, ADVANTAGE_ESTIMATORS["grpo"], CREDIT["best_worst"], False, tmp_path / folder,
                          False, batch)
        return run_step(parts, batch[:2], step=1), learner

    result, learner = step("one", problems("alike0", "mixed0"))
    assert result.trained and (result.metrics["credit/tied_groups"], result.metrics["credit/pairs"]) == (1, 1)
    (pair,) = learner.trained
    assert len(pair) == 2 and {s.episode for s in pair} == {1}

    result, learner = step("none", problems("alike0", "alike1"))
    assert not result.trained and not learner.trained
    assert result.skipped_because == "learner.credit=best_worst kept no sample (credit/tied_groups 2, credit/pairs 0)"

    result, learner = step("refill", problems("alike0", "alike1", "mixed0", "mixed1"), "rollout.dynamic_sampling=true")
    assert result.trained and (result.metrics["credit/tied_groups"], result.metrics["credit/pairs"]) == (0, 2)
    assert result.metrics["rollout/degenerate_groups"] == 2 and len(learner.trained[0]) == 4


@pytest.mark.parametrize("overrides,message", [
    (["learner.policy_loss=dpo"], "learner.policy_loss=dpo trains the pairs that learner.credit=best_worst makes"),
    (["learner.credit=best_worst"], "got policy_loss=clipped, credit=best_worst"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "learner.kl_coef=0.01"],
     "learner.kl_coef, kl_in_reward_coef, tis_cap and mask_truncated do not apply to learner.policy_loss=dpo"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "learner.tis_cap=2"], "got 0.0, 0.0, 2.0, False"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "learner.kl_in_reward_coef=0.1"], "got 0.0, 0.1, None"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "learner.mask_truncated=true"], "None, True"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "learner.correction=decoupled"],
     "learner.correction=decoupled weighs tokens by vLLM's logprobs"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "rollout.protocol=self_correct", "rollout.rounds=1"],
     "learner.credit=best_worst does not know the episodes of rollout.protocol=self_correct"),
    (["learner.policy_loss=dpo", "learner.credit=best_worst", "rollout.protocol=markovian"],
     "learner.credit=best_worst does not know the episodes of rollout.protocol=markovian"),
])
def test_the_config_refuses_dpo_and_best_worst_apart_and_where_they_do_not_apply(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides)


@pytest.mark.parametrize("protocol", [["rollout.rounds=1"], ["rollout.rounds=3"]])
def test_dpo_with_best_worst_is_accepted_for_single_round_and_motif(protocol):
    config = load_config("demo", ["learner.policy_loss=dpo", "learner.credit=best_worst", *protocol])
    assert (config.learner.policy_loss, config.learner.credit) == ("dpo", "best_worst")


def sequence_logprob(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Sum of the completion's token logprobs at temperature 1, float32, from the model's own forward."""
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    token_logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(token_logp[len(prompt_ids) - 1:].sum())


def test_motif_train_with_on_policy_dpo_raises_the_chosen_margin(tmp_path):
    """A 2-step MOTIF run (smoke config) under dpo + best_worst, a length reward making the untrained model's
    rewards differ, micro-batches of 3 (a pair is never split: the learner group plans whole episodes). The
    learner's trained samples are recorded (tests/golden_run.py); the pairs are checked against samples.jsonl's
    rewards, the step-1 metrics against HF's base-model logprobs, and the step-1 checkpoint's adapter raises every
    step-1 pair's margin over the base model's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, out = tmp_path / "run", tmp_path / "recording.json"
    cmd = [sys.executable, "-m", "tests.golden_run", str(out), "--config", "tests/configs/smoke.yaml",
           f"output_dir={run_dir}", f"model.tiny_model_dir={tmp_path / 'tiny'}",
           "reward.components=[{name: format, weight: 0.5}, {name: accuracy}, "
           "{name: 'tests/golden/length_reward.py:length', weight: 0.3}]",
           "learner.policy_loss=dpo", "learner.credit=best_worst", "learner.kl_coef=0", "learner.learning_rate=1e-3",
           "learner.micro_batch_size=3", "checkpoint.every=1", "eval.every=2", "eval.limit=2", "eval.n=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    recording = json.loads(out.read_text())
    metrics = [m for m in recording["metrics"] if m["step"] > 0]
    assert [m["adapter_version"] for m in metrics] == [1, 2]  # trained and pushed at both steps
    assert "eval/pass@1" in recording["metrics"][0] and "eval/pass@1" in metrics[-1]  # held out at 0 and 2
    for m in metrics:
        assert m["credit/pairs"] + m["credit/tied_groups"] == 2 and m["credit/pairs"] >= 1
        assert m["optimizer_steps"] == 1 and "kl" not in m
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # Step 2 sampled under the adapter step 1 pushed.
    step2 = [json.loads(line) for line in (run_dir / "samples" / "step-2.jsonl").read_text().splitlines()]
    assert {r["adapter_version"] for r in step2} == {1}

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    trained = recording["trained"][0]
    pairs = [(trained[k], trained[k + 1]) for k in range(0, len(trained), 2)]
    assert len(pairs) == metrics[0]["credit/pairs"]
    # Each pair is its prompt's first best-rewarded and first worst-rewarded round-1 response, in sampling order.
    episodes = [json.loads(line) for line in (run_dir / "samples" / "step-1.jsonl").read_text().splitlines()]
    by_prompt: dict[int, list[dict]] = {}
    for e in episodes:
        by_prompt.setdefault(e["prompt"], []).append(e)
    expected = []
    for group in by_prompt.values():
        best = next(e for e in group if e["reward"] == max(g["reward"] for g in group))
        worst = next(e for e in group if e["reward"] == min(g["reward"] for g in group))
        if best["reward"] != worst["reward"]:
            expected.append((best, worst))
    assert len(pairs) == len(expected)
    for pair, episodes_of_pair in zip(pairs, expected):
        for sample, e in zip(pair, episodes_of_pair):
            # vLLM's text leaves out a trailing partial UTF-8 character that decoding the ids shows.
            assert len(sample["completion_ids"]) == e["turns"][0]["tokens"]
            assert tokenizer.decode(sample["completion_ids"], skip_special_tokens=True).startswith(e["response"])
    assert all(s["temperature"] == 1.0 for pair in pairs for s in pair)

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", dtype="float32").eval()

    def margins(model):
        return [sequence_logprob(model, c["prompt_ids"], c["completion_ids"])
                - sequence_logprob(model, r["prompt_ids"], r["completion_ids"]) for c, r in pairs]

    # Before step 1 the adapter is zero: the policy is the reference, h = 0, and the learner's sequence
    # logprobs are HF's.
    first = metrics[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["dpo/reward_margin"] == pytest.approx(0, abs=1e-6)
    assert first["dpo/logp_chosen"] == pytest.approx(
        sum(sequence_logprob(base, c["prompt_ids"], c["completion_ids"]) for c, _ in pairs) / len(pairs), abs=1e-3)
    before = margins(base)
    (checkpoint,) = (run_dir / "checkpoints").glob("step-00000001")
    after = margins(PeftModel.from_pretrained(base, checkpoint / "adapter").eval())
    assert all(a > b for a, b in zip(after, before)), (before, after)
