"""RLMT reward model: a tiny sequence-classification model trained here (Bradley-Terry, a few steps) to
prefer one kind of answer ranks held-out answers that way through the Ray actor, with thinking removed."""

from __future__ import annotations

import contextlib
import os
import random
import signal

import pytest
import torch

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
    from tests.tiny_reward_model import build_tiny_reward_model
    from rewards.reward_model import RewardModelScorer

    path = build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model")
    scorer = RewardModelScorer(str(path))
    model, tokenizer = scorer.model, scorer.tokenizer
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = pairs(seed=0, n=240)
    for step in range(30):
        batch = train[step * 8 : (step + 1) * 8]
        texts = [scorer.render(q, a) for q, chosen, rejected in batch for a in (chosen, rejected)]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        scores = model(**inputs).logits[:, 0].view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"reward model: final Bradley-Terry loss {loss.item():.4f}")
    model.save_pretrained(path)
    return str(path)


def ranking_accuracy(scores_chosen, scores_rejected) -> float:
    return sum(c > r for c, r in zip(scores_chosen, scores_rejected)) / len(scores_chosen)


def test_trained_reward_model_ranks_held_out_answers_through_the_actor(ray_session, trained_reward_model, tmp_path):
    from tests.tiny_reward_model import build_tiny_reward_model
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


def test_batched_scores_equal_one_at_a_time(ray_session, trained_reward_model):
    from rewards.reward_model import RewardModelWorker

    actor = RewardModelWorker.remote(trained_reward_model, batch_size=3)
    questions = QUESTIONS * 2
    answers = ["The answer is 7.", "cat", "dog river cloud apple slow green tree", "The answer is 12.", "", "sky"]
    batched = ray_session.get(actor.score.remote(questions, answers))
    single = [ray_session.get(actor.score.remote([q], [a]))[0] for q, a in zip(questions, answers)]
    assert batched == pytest.approx(single, abs=1e-5)
    thinking = ray_session.get(actor.score.remote([questions[0]], ["<reasoning>The answer is 7.</reasoning><answer>cat</answer>"]))
    assert thinking == pytest.approx(ray_session.get(actor.score.remote([questions[0]], ["cat"])), abs=1e-5)
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
