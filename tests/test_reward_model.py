"""RLMT reward model: a tiny sequence-classification model trained here (Bradley-Terry, a few steps, from a tiny
language model's trunk) to prefer one kind of answer ranks held-out answers that way through the Ray actor, which
is sent the answers with their thinking removed; under `strict` a malformed response gets the null score."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from types import SimpleNamespace

import pytest

from rewards import RewardSample, RewardTerm, build_rewards, score_samples

WORDS = ["cat", "dog", "blue", "sky", "tree", "maybe", "house", "green", "slow", "river", "cloud", "apple"]
QUESTIONS = ["What is 3+4?", "How many apples are left?", "Natalia sold clips in April. How many in May?"]


def preferred(rng: random.Random) -> str:
    return f"The answer is {rng.randint(0, 999)}."


def dispreferred(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))


def pairs(seed: int, n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(QUESTIONS), preferred(rng), dispreferred(rng)) for _ in range(n)]


@pytest.fixture(scope="module")
def trained_reward_model(tmp_path_factory) -> str:
    from cluster.bench.rlmt import train_reward_model
    from learner.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("rm")
    figures = train_reward_model(root / "model", build_tiny_model(root / "language-model"), pairs(seed=0, n=240),
                                 steps=30, batch_size=8, learning_rate=1e-3)
    print("reward model:", figures)
    return str(root / "model")


def ranking_accuracy(scores_chosen, scores_rejected) -> float:
    return sum(c > r for c, r in zip(scores_chosen, scores_rejected)) / len(scores_chosen)


def test_trained_reward_model_ranks_held_out_answers_through_the_actor(ray_session, trained_reward_model, tmp_path):
    from learner.tiny_model import build_tiny_reward_model
    from rewards.reward_model import RewardModelWorker

    held_out = pairs(seed=1, n=32)
    questions = [q for q, _, _ in held_out]
    accuracies = {}
    for name, model in [("untrained", str(build_tiny_reward_model(tmp_path / "untrained"))),
                        ("trained", trained_reward_model)]:
        actor = RewardModelWorker.remote(model, batch_size=8)
        chosen = ray_session.get(actor.score.remote(questions, [c for _, c, _ in held_out]))
        rejected = ray_session.get(actor.score.remote(questions, [r for _, _, r in held_out]))
        accuracies[name] = ranking_accuracy(chosen, rejected)
        ray_session.kill(actor)
    print("held-out ranking accuracy:", accuracies)
    assert accuracies["trained"] == 1.0
    assert accuracies["untrained"] < 1.0


class RecordingScorer:
    """The real reward model actor, keeping every (prompt, response) it is sent."""

    def __init__(self, *args, **kwargs):
        from rewards.reward_model import RewardModelScorer

        self.scorer, self.sent = RewardModelScorer(*args, **kwargs), []

    def score(self, prompts, responses):
        self.sent += list(zip(prompts, responses))
        return self.scorer.score(prompts, responses)

    def received(self):
        return self.sent


class StartRecording:
    """Stands in for RewardModelWorker in the registry: starts a RecordingScorer with the registry's options and
    keeps its handle."""

    def __init__(self, ray):
        self.actor, self.handles = ray.remote(RecordingScorer), []

    def options(self, **options):
        def remote(*args, **kwargs):
            self.handles.append(self.actor.options(**options).remote(*args, **kwargs))
            return self.handles[-1]

        return SimpleNamespace(remote=remote)


@pytest.mark.parametrize("strict", [True, False])
def test_the_reward_model_is_sent_the_response_alone_and_strict_gives_malformed_the_null_score(
        ray_session, trained_reward_model, monkeypatch, strict):
    import rewards.reward_model
    from rewards.reward_model import RewardModelScorer

    started = StartRecording(ray_session)
    monkeypatch.setattr(rewards.reward_model, "RewardModelWorker", started)
    (reward,) = build_rewards([RewardTerm("reward_model", model=trained_reward_model, strict=strict)], "think_response")
    good, bad = "The answer is 7.", "cat dog tree"
    thinking = f"SECRET {good} {good}"  # praises the preferred kind of answer: only the response may count
    responses = [
        f"<think>{thinking}</think>{good}",
        f"<think>{thinking}</think>\n{bad}",
        good,  # no thinking: malformed
        f"<think>{thinking}</think>{good}<think>again</think>",  # malformed
        f"<think>{thinking} unfinished",  # malformed, nothing to score
    ]
    q = QUESTIONS[0]
    try:
        scored = score_samples([reward], [RewardSample(q, None, r, (r,), "think_response") for r in responses])
        sent = ray_session.get(started.handles[-1].received.remote())
    finally:
        reward.close()
    answers = [good, bad] if strict else [good, bad, good, good, ""]
    assert sent == [(q, a) for a in answers]
    assert not any("SECRET" in a or "think>" in a for _, a in sent)
    # The oracle: the same model in this process, scoring the bare answers.
    reference = RewardModelScorer(trained_reward_model).score([q] * 2, [good, bad])
    values = scored.totals
    assert values[:2] == pytest.approx(reference, abs=1e-5)
    if strict:
        assert values[2:] == [min(values[:2])] * 3
        assert scored.metrics["reward/reward_model/malformed"] == 3
    else:
        assert values[2] == pytest.approx(reference[0], abs=1e-5)
        assert "reward/reward_model/malformed" not in scored.metrics


def test_batched_scores_equal_one_at_a_time(ray_session, trained_reward_model):
    from rewards.reward_model import RewardModelWorker

    actor = RewardModelWorker.remote(trained_reward_model, batch_size=3)
    questions = QUESTIONS * 2
    answers = ["The answer is 7.", "cat", "dog river cloud apple slow green tree", "The answer is 12.", "", "sky"]
    batched = ray_session.get(actor.score.remote(questions, answers))
    single = [ray_session.get(actor.score.remote([q], [a]))[0] for q, a in zip(questions, answers)]
    assert batched == pytest.approx(single, abs=1e-5)
    ray_session.kill(actor)


def test_over_long_pairs_are_cut_from_the_front_and_still_scored(ray_session, trained_reward_model):
    from rewards.reward_model import RewardModelWorker

    actor = RewardModelWorker.remote(trained_reward_model, max_length=24)
    long_question = "How many apples are left? " * 200
    good, bad = ray_session.get(actor.score.remote([long_question] * 2, ["The answer is 7.", "cat dog tree"]))
    assert good > bad  # the end of the pair, where the score is read, survives truncation
    ray_session.kill(actor)


def test_registry_reward_model_scores_answers_without_thinking(ray_session, trained_reward_model):
    (reward,) = build_rewards([RewardTerm("reward_model", model=trained_reward_model, weight=2.0)], "reasoning_answer")
    try:
        q = QUESTIONS[0]
        good, bad = "The answer is 7.", "cat dog tree"
        samples = [
            RewardSample(q, None, good, (good,), "reasoning_answer"),
            RewardSample(q, None, bad, (bad,), "reasoning_answer"),
            # The thinking praises the preferred kind of answer; only the answer block may count.
            RewardSample(q, None, "", (f"<reasoning>{good} {good}</reasoning><answer>{bad}</answer>",), "reasoning_answer"),
            RewardSample(q, None, "", (f"<think>{bad}</think>{good}",), "reasoning_answer"),
            # MOTIF: the reward is the mean over the k final answers.
            RewardSample(q, None, "", (good, bad), "reasoning_answer"),
        ]
        scored = score_samples([reward], samples)
        totals, metrics = scored.totals, scored.metrics
        values = [t / 2.0 for t in totals]
        assert values[0] > values[1]
        assert values[2] == pytest.approx(values[1], abs=1e-5)
        assert values[3] == pytest.approx(values[0], abs=1e-5)
        assert values[4] == pytest.approx((values[0] + values[1]) / 2, abs=1e-5)
        assert metrics["reward/reward_model"] == pytest.approx(sum(values) / 5)

        # The actor killed from outside: replaced, the batch scored again, the restart counted.
        os.kill(reward_model_pid(), signal.SIGKILL)
        scored = score_samples([reward], samples)
        again, metrics = scored.totals, scored.metrics
        assert again == pytest.approx(totals, abs=1e-5)
        assert metrics["reward/reward_model/actor_restarts"] == 1
    finally:
        reward.close()


def reward_model_pid() -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::RewardModelScorer"):
                    return int(entry)
    raise AssertionError("no reward model actor process")
