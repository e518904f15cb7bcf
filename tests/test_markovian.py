"""The markovian protocol (adaptive rounds) on a scripted model: an answer ends a chain, the carry-over is
exactly what it says, max_rounds bounds every chain in training and may be raised for evaluation."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config
from learner.credit import CREDIT
from rollout.protocols import PROTOCOLS
from rollout.protocols.markovian import MarkovianSpec, outcomes
from rollout.records import Completion

PROTOCOL = PROTOCOLS["markovian"]
ANSWER = "<reasoning>r</reasoning><answer>\\boxed{4}</answer>"


def progress(n: int) -> str:
    return f"<reasoning>r</reasoning><progress>note {n}</progress>"


def scripted(answer_at: dict[int, int], ids=lambda n: [n]):
    """Sample s answers in round answer_at.get(s) (never, when absent); other rounds hand on a note. The
    sample is read back from the note carried ("note s.r")."""
    sent = []

    def generate(conversations, sampling, use_adapter):
        out = []
        for conversation in conversations:
            sent.append(conversation[-1]["content"])
            message = conversation[-1]["content"]
            if "Carried over" not in message:
                out.append([_completion(s, 1, answer_at) for s in range(sampling.n)])
            else:
                round_index = int(message.split("This is round ")[1].split(" ")[0])
                s = int(message.split("note ")[1].split(".")[0]) if "note " in message else 0
                out.append([_completion(s, round_index, answer_at) for _ in range(sampling.n)])
        return out

    def _completion(s, r, answers):
        text = ANSWER if answers.get(s) == r else progress(f"{s}.{r}")
        return Completion([1], ids(100 * s + r), text, [0.0], "stop", 0)

    return generate, sent


def test_an_answer_ends_the_chain_and_max_rounds_bounds_the_rest():
    generate, sent = scripted({0: 1, 1: 3})
    spec = MarkovianSpec(samples_per_prompt=3, continuations=1, max_rounds=4)
    episodes = PROTOCOL.rollout(generate, ["q"], spec)
    # Sample 0 answered in round 1: no chain. Sample 1 answered in round 3. Sample 2 never: 4 rounds.
    assert [len(e.turns) for e in episodes] == [1, 3, 4]
    assert episodes[0].chains() == []
    assert "note 1.1" in episodes[1].turns[1].message and "round 2 of at most 4" in episodes[1].turns[1].message
    assert "give the final answer" in episodes[2].turns[3].message  # the last round must answer
    assert [outcomes(e, {}) for e in episodes] == [{"rounds": 1.0, "answered_early": 1.0},
                                                   {"rounds": 3.0, "answered_early": 1.0},
                                                   {"rounds": 4.0, "answered_early": 0.0}]
    # Finals: the root when it answered, else each chain's last round.
    assert [t.completion.text for t in PROTOCOL.finals(episodes[0])] == [ANSWER]
    assert PROTOCOL.finals(episodes[2])[0] is episodes[2].turns[3]


def test_the_token_carry_over_is_exactly_the_last_carry_tokens_tokens():
    generate, sent = scripted({}, ids=lambda n: list(range(n, n + 50)))
    spec = MarkovianSpec(samples_per_prompt=1, continuations=1, max_rounds=2, carry="tokens", carry_tokens=5,
                         decode=lambda ids: "|".join(map(str, ids)))
    (episode,) = PROTOCOL.rollout(generate, ["q"], spec)
    carried = episode.turns[1].message.split("Carried over from round 1:\n")[1].split("\n\n")[0]
    assert carried == "|".join(map(str, range(1 + 45, 1 + 50)))
    with pytest.raises(RuntimeError, match="tokenizer"):
        PROTOCOL.rollout(generate, ["q"], MarkovianSpec(samples_per_prompt=1, continuations=1, carry="tokens"))


def test_credits_train_every_round_with_the_episode_advantage_or_round_one_alone():
    generate, _ = scripted({0: 1, 1: 3})
    episodes = PROTOCOL.rollout(generate, ["q"], MarkovianSpec(samples_per_prompt=2, continuations=1, max_rounds=4))
    every = CREDIT["every_turn"](episodes, [1.0, -1.0])
    assert [(s.completion_ids, s.advantage) for s in every] == [([1], 1.0), ([101], -1.0), ([102], -1.0), ([103], -1.0)]
    assert [s.completion_ids for s in CREDIT["first_round"](episodes, [1.0, -1.0])] == [[1], [101]]


def test_evaluation_may_allow_more_rounds_than_training():
    from cluster.evaluation import eval_spec
    from cluster.spec import rollout_spec

    config = load_config("tests/configs/smoke.yaml", ["rollout.protocol=markovian", "rollout.max_rounds=3",
                                                      "eval.max_rounds=6"])
    spec = eval_spec(config, rollout_spec(config, []))
    assert spec.max_rounds == 6 and spec.continuations == 1
    generate, _ = scripted({})
    (episode, *_) = PROTOCOL.rollout(generate, ["q"], spec)
    assert len(episode.turns) == 6
    with pytest.raises(ConfigError, match="eval.max_rounds is for rollout.protocol=markovian"):
        load_config("tests/configs/smoke.yaml", ["eval.max_rounds=6"])
    with pytest.raises(ConfigError, match="rollout.carry must be one of progress, tokens"):
        load_config("tests/configs/smoke.yaml", ["rollout.protocol=markovian", "rollout.carry=all"])


def test_credits_that_train_later_rounds_need_them_sampled_from_the_policy():
    markovian = ["rollout.protocol=markovian"]
    with pytest.raises(ConfigError, match="every_turn trains every turn"):
        load_config("tests/configs/smoke.yaml", [*markovian, "learner.credit=every_turn", "rollout.continuation_top_p=0.9"])
    with pytest.raises(ConfigError, match="every_round ranks a sample's continuations"):
        load_config("tests/configs/smoke.yaml", [*markovian, "learner.credit=every_round", "rollout.rounds=1",
                                                 "rollout.continuations=1"])
    assert load_config("tests/configs/smoke.yaml", [*markovian, "learner.credit=first_round",
                                                    "rollout.continuation_policy=frozen_base"]).rollout.carry == "progress"
