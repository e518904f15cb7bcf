"""MOTIF fan-out: B prompts -> B*m episodes (a round-1 root, k chains below it) -> B*m*k finals, progress carried,
versions tagged; the protocols' turns, trees and stop rule on scripted model output."""

from __future__ import annotations

import pytest

from rollout.protocols import PROTOCOLS
from rollout.protocols.motif import MotifSpec, motif_rollout
from rollout.records import INJECTED, MODEL, Completion, Episode, SamplingSpec, Turn

QUESTIONS = ["What is 7 * 6?", "A train travels 60 miles in 2 hours. What is its speed?"]


def test_fan_out_through_the_pool(ray_session, rollout_worker, rollout_pool):
    spec = MotifSpec(samples_per_prompt=3, continuations=2, rounds=3,
                     first_round=SamplingSpec(max_tokens=12), continuation=SamplingSpec(temperature=0.8, max_tokens=12))
    trajectories = PROTOCOLS["motif"].rollout(rollout_pool.generate, QUESTIONS, spec)
    version = ray_session.get(rollout_worker.adapter_version.remote())
    B, m, k, R = len(QUESTIONS), 3, 2, 3
    assert len(trajectories) == B * m
    assert sorted(t.prompt_index for t in trajectories) == sorted(list(range(B)) * m)
    assert all(len(t.chains()) == k and all(len(chain) == R - 1 for chain in t.chains()) for t in trajectories)
    assert sum(len(PROTOCOLS["motif"].finals(t)) for t in trajectories) == B * m * k
    for t in trajectories:
        assert t.root.completion.completion_ids and t.root.completion.adapter_version == version
        for chain in t.chains():
            prompts = [turn.message for turn in chain]
            assert all(turn.completion.adapter_version == version for turn in chain)
            assert "round 2 of 3" in prompts[0] and "round 3 of 3" in prompts[1]
            assert "\\boxed" in prompts[1] and "\\boxed" not in prompts[0]
            assert QUESTIONS[t.prompt_index] in prompts[0]
    # The k continuations of one round-1 sample are independent samples, not copies.
    distinct = sum(len({tuple(chain[0].completion.completion_ids) for chain in t.chains()}) > 1 for t in trajectories)
    assert distinct > 0


def test_frozen_base_continuations_use_version_zero(rollout_pool):
    spec = MotifSpec(samples_per_prompt=2, continuations=2, rounds=2, continuation_policy="frozen_base",
                     first_round=SamplingSpec(max_tokens=8), continuation=SamplingSpec(max_tokens=8))
    trajectories = PROTOCOLS["motif"].rollout(rollout_pool.generate, QUESTIONS[:1], spec)
    assert all(turn.completion.adapter_version == 0 for t in trajectories for chain in t.chains() for turn in chain)


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
        # The tree: the root (round 1), k round-2 children, each with one round-3 child; all model turns.
        assert [(turn.index, turn.parent) for turn in t.turns] == [(1, None), (2, 0), (2, 0), (2, 0), (3, 1), (3, 2), (3, 3)]
        assert all(turn.role == MODEL for turn in t.turns)
        assert [turn.temperature for turn in t.turns] == [1.0] + [0.8] * 6
        for chain in t.chains():
            previous = [t.root.completion.text] + [turn.completion.text for turn in chain[:-1]]
            for prev_text, prompt in zip(previous, [turn.message for turn in chain]):
                progress = prev_text.split("<progress>")[1].split("</progress>")[0].strip()
                assert progress in prompt and "spans lines" in prompt
                assert "SECRET-REASONING" not in prompt
                assert ("Q-one" if t.prompt_index == 0 else "Q-two") in prompt
        finals = [turn.completion.text for turn in PROTOCOLS["motif"].finals(t)]
        assert finals == [chain[-1].completion.text for chain in t.chains()]
        assert all("\\boxed{42}" in text for text in finals)


def test_single_round_is_plain_grpo():
    """The single protocol stops after one turn, whatever rounds the spec it is handed says."""
    model = ScriptedModel()
    trajectories = PROTOCOLS["single"].rollout(model, ["Q"], MotifSpec(samples_per_prompt=5, rounds=3))
    assert model.calls == [(1, 5)] and len(trajectories) == 5
    assert all(len(t.turns) == 1 and t.chains() == [] and PROTOCOLS["single"].finals(t) == [t.root]
               for t in trajectories)
    assert all("round 1 of 1" in t.root.message and "give the final answer" in t.root.message for t in trajectories)


def test_protocol_config_checks_name_the_keys():
    from cluster.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.protocol=single has one round"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=single"])
    with pytest.raises(ConfigError, match="rollout.protocol=motif needs rollout.rounds >= 2"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=motif", "rollout.rounds=1"])
    with pytest.raises(ConfigError, match="is not one of markovian, motif, self_correct, single"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=debate"])
    assert load_config("tests/configs/smoke.yaml", ["rollout.rounds=1"]).rollout.protocol is None  # single


def test_injected_turns_are_never_trained():
    """A turn the protocol wrote (role injected) stays out of every credit assignment; the model's turns of the
    same chain are trained."""
    from learner.advantages import grpo_advantages
    from learner.credit import CREDIT

    def turn(ids, index, parent, role=MODEL):
        return Turn(Completion([9], ids, "t", [0.0] * len(ids), "stop", 1), "m", index, parent, 0.8, role)

    def episode(prompt):
        e = Episode(prompt, [Turn(Completion([1], [2], "r1", [0.0], "stop", 1), "m", 1, None, 1.0)])
        for chain in range(2):
            below = e.add(turn([10 + chain], 2, 0, INJECTED))
            e.add(turn([20 + chain], 3, below))
        return e

    episodes = [episode(0), episode(1)]
    trained = CREDIT["every_round"](episodes, [1.0, -1.0], final_scores=[[1.0, 0.0], [0.0, 1.0]],
                                    estimator=grpo_advantages, norm_by_std=True)
    completions = [s.completion_ids for s in trained]
    assert completions == [[2], [2], [20], [21], [20], [21]]
    assert all(s.temperature == 0.8 for s in trained[2:])


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
    from rollout.protocols.motif import MISSING_PROGRESS

    model = ForgetfulModel()
    trajectories = motif_rollout(model, ["Q-one"], MotifSpec(samples_per_prompt=2, continuations=3, rounds=3))
    for t in trajectories:
        for chain in t.chains():
            assert all(MISSING_PROGRESS in turn.message and "SECRET-REASONING" not in turn.message for turn in chain)
        # round 1 once, then each of the k chains' round 2: 1 + 3 rounds passed on no progress
        assert t.stats["missing_progress"] == 1 + 3


def test_each_round_is_told_what_it_is_rewarded_for():
    from cluster.config import load_config
    from cluster.spec import rollout_spec
    from rewards import FORMATS, build_rewards

    config = load_config("cluster/configs/demo.yaml", ["reward.motivation=true", "rollout.rounds=3"])
    spec = rollout_spec(config, build_rewards(config.reward.components, "reasoning_progress"))
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


@pytest.mark.parametrize("response_format", ["think_response", "response"])
def test_a_single_round_asked_for_another_format_sends_the_question_under_that_formats_prompt(response_format):
    from cluster.config import load_config
    from cluster.spec import response_format as run_format, rollout_spec
    from rewards import FORMATS, build_rewards, score_samples
    from cluster.loop.step import reward_samples
    from cluster.tasks.data import Problem
    from rollout.protocols.single import SYSTEM_PROMPTS

    config = load_config("cluster/configs/demo.yaml", ["reward.motivation=consistent", "rollout.rounds=1",
                                                       f"rollout.response_format={response_format}"])
    assert run_format(config) == response_format
    rewards = build_rewards(config.reward.components, response_format)
    spec = rollout_spec(config, rewards)
    sent = []

    def generate(conversations, sampling, use_adapter):
        sent.append((conversations, sampling.n))
        return [[Completion([1], [2], "<think>a+1:2=3</think>\\boxed{3}", [0.0], "stop", 7)] * sampling.n
                for _ in conversations]

    protocol = PROTOCOLS["single"]
    episodes = protocol.rollout(generate, ["Start with x=2. Apply in order, mod 10: a+1."], spec)
    (conversations, n), = sent
    assert n == config.rollout.samples_per_prompt and len(episodes) == n
    system, user = conversations[0]
    # The question as it is, the format told in the system prompt with the motivation after it.
    assert user == {"role": "user", "content": "Start with x=2. Apply in order, mod 10: a+1."}
    assert system["content"].startswith(SYSTEM_PROMPTS[response_format] + "\n\n")
    assert FORMATS[response_format].description in system["content"]
    assert "<reasoning>" not in system["content"] + user["content"]
    assert all(len(e.turns) == 1 and protocol.finals(e) == [e.root] for e in episodes)
    # The format reward checks the response against the asked format.
    samples = reward_samples(episodes, [Problem("q", "3", 0)], protocol, spec)
    expected = 1.0 if response_format == "think_response" else 0.0
    assert score_samples(rewards[:1], samples).totals == [0.2 * expected] * n
