"""MOTIF fan-out: B prompts -> B*m round-1 samples -> B*m*k finals, progress carried, versions tagged."""

from __future__ import annotations

import pytest

from rollout.protocols import MotifSpec, motif_rollout
from rollout.records import Completion, SamplingSpec

QUESTIONS = ["What is 7 * 6?", "A train travels 60 miles in 2 hours. What is its speed?"]


def test_fan_out_through_the_pool(ray_session, rollout_worker, rollout_pool):
    spec = MotifSpec(samples_per_prompt=3, continuations=2, rounds=3,
                     first_round=SamplingSpec(max_tokens=12), continuation=SamplingSpec(temperature=0.8, max_tokens=12))
    trajectories = rollout_pool.motif_rollout(QUESTIONS, spec)
    version = ray_session.get(rollout_worker.adapter_version.remote())
    B, m, k, R = len(QUESTIONS), 3, 2, 3
    assert len(trajectories) == B * m
    assert sorted(t.prompt_index for t in trajectories) == sorted(list(range(B)) * m)
    assert all(len(t.chains) == k and all(len(chain) == R - 1 for chain in t.chains) for t in trajectories)
    assert sum(len(t.final_texts()) for t in trajectories) == B * m * k
    for t in trajectories:
        assert t.first.completion_ids and t.first.adapter_version == version
        for chain, prompts in zip(t.chains, t.round_prompts):
            assert all(c.adapter_version == version for c in chain)
            assert "round 2 of 3" in prompts[0] and "round 3 of 3" in prompts[1]
            assert "\\boxed" in prompts[1] and "\\boxed" not in prompts[0]
            assert QUESTIONS[t.prompt_index] in prompts[0]
    # The k continuations of one round-1 sample are independent samples, not copies.
    distinct = sum(len({tuple(chain[0].completion_ids) for chain in t.chains}) > 1 for t in trajectories)
    assert distinct > 0


def test_frozen_base_continuations_use_version_zero(rollout_pool):
    spec = MotifSpec(samples_per_prompt=2, continuations=2, rounds=2, continuation_policy="frozen_base",
                     first_round=SamplingSpec(max_tokens=8), continuation=SamplingSpec(max_tokens=8))
    trajectories = rollout_pool.motif_rollout(QUESTIONS[:1], spec)
    assert all(c.adapter_version == 0 for t in trajectories for chain in t.chains for c in chain)


class ScriptedModel:
    """Stands in for a trained model's text (no pretrained model exists offline): tagged, traceable output."""

    def __init__(self):
        self.calls = []

    def __call__(self, conversations, spec, use_adapter):
        self.calls.append((len(conversations), spec.n))
        out = []
        for i, conv in enumerate(conversations):
            user = conv[-1]["content"]
            samples = []
            for j in range(spec.n):
                tag = f"call{len(self.calls)}-p{i}-s{j}"
                text = (f"<reasoning>SECRET-REASONING {tag}\nline two</reasoning>\n"
                        f"<progress>PROGRESS {tag}\nspans lines</progress>")
                if "give the final answer" in user:
                    text = f"<reasoning>r {tag}</reasoning><answer>\\boxed{{42}}</answer>"
                samples.append(Completion([1], [2], text, [0.0], "stop", 7 if use_adapter else 0))
            out.append(samples)
        return out


def test_round_prompts_carry_progress_not_reasoning_and_batch_each_round():
    model = ScriptedModel()
    spec = MotifSpec(samples_per_prompt=4, continuations=3, rounds=3)
    trajectories = motif_rollout(model, ["Q-one", "Q-two"], spec)
    # one batched call per round: B prompts (n=m), then B*m prompts (n=k), then B*m*k prompts (n=1)
    assert model.calls == [(2, 4), (8, 3), (24, 1)]
    for t in trajectories:
        for chain, prompts in zip(t.chains, t.round_prompts):
            previous = [t.first.text] + [c.text for c in chain[:-1]]
            for prev_text, prompt in zip(previous, prompts):
                progress = prev_text.split("<progress>")[1].split("</progress>")[0].strip()
                assert progress in prompt and "spans lines" in prompt
                assert "SECRET-REASONING" not in prompt
                assert ("Q-one" if t.prompt_index == 0 else "Q-two") in prompt
        assert t.final_texts() == [chain[-1].text for chain in t.chains]
        assert all("\\boxed{42}" in text for text in t.final_texts())


def test_single_round_is_plain_grpo():
    model = ScriptedModel()
    trajectories = motif_rollout(model, ["Q"], MotifSpec(samples_per_prompt=5, rounds=1))
    assert model.calls == [(1, 5)] and len(trajectories) == 5
    assert all(t.chains == [] and t.final_texts() == [t.first.text] for t in trajectories)


@pytest.mark.parametrize("kwargs", [dict(samples_per_prompt=0), dict(rounds=0), dict(continuation_policy="base")])
def test_invalid_spec_is_rejected(kwargs):
    with pytest.raises(ValueError):
        MotifSpec(**kwargs)


def test_over_long_prompt_is_reported_not_sent(ray_session, rollout_worker):
    long_question = "apples and oranges " * 400  # far beyond max_model_len=512 tokens
    out = ray_session.get(rollout_worker.generate.remote(
        [[{"role": "user", "content": long_question}], [{"role": "user", "content": "2+2?"}]],
        SamplingSpec(n=2, max_tokens=8)))
    assert [c.finish_reason for c in out[0]] == ["prompt_too_long"] * 2
    assert all(c.completion_ids == [] for c in out[0])
    assert all(c.completion_ids and c.finish_reason in ("stop", "length") for c in out[1])


class ForgetfulModel(ScriptedModel):
    """Writes round-1 reasoning but never a <progress> tag."""

    def __call__(self, conversations, spec, use_adapter):
        self.conversations = getattr(self, "conversations", []) + [conversations]
        self.calls.append((len(conversations), spec.n))
        return [[Completion([1], [2], f"<reasoning>SECRET-REASONING {i}-{j}</reasoning>", [0.0], "stop", 1)
                 for j in range(spec.n)] for i in range(len(conversations))]


def test_missing_progress_carries_nothing_and_is_counted():
    from rollout.protocols import MISSING_PROGRESS

    model = ForgetfulModel()
    trajectories = motif_rollout(model, ["Q-one"], MotifSpec(samples_per_prompt=2, continuations=3, rounds=3))
    for t in trajectories:
        for prompts in t.round_prompts:
            assert all(MISSING_PROGRESS in p and "SECRET-REASONING" not in p for p in prompts)
        # round 1 once, then each of the k chains' round 2: 1 + 3 rounds passed on no progress
        assert t.missing_progress == 1 + 3


def test_each_round_is_told_what_it_is_rewarded_for():
    from cluster.config import load_config
    from cluster.spec import motif_spec
    from rewards import FORMATS, build_rewards

    config = load_config("cluster/configs/demo.yaml", ["reward.motivation=true", "rollout.rounds=3"])
    spec = motif_spec(config, build_rewards(config.reward.components, "reasoning_progress"))
    model = ScriptedModel()
    model.systems = []
    original = model.__call__

    def record(conversations, sampling, use_adapter):
        model.systems.append({c[0]["content"] for c in conversations})
        return original(conversations, sampling, use_adapter)

    motif_rollout(record, ["Q"], spec)
    first, middle, last = model.systems
    progress, answer = FORMATS["reasoning_progress"].description, FORMATS["reasoning_answer"].description
    assert all(progress in s and answer not in s for s in first | middle)
    assert all(answer in s and progress not in s for s in last)
    assert all("accuracy (weight 1)" in s for s in first | middle | last)
