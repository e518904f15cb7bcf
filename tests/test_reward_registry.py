"""Format rewards per protocol, the reward registry (built-in and user rewards, weights, per-component
metrics, failures contained) and the motivation text (MeRF)."""

from __future__ import annotations

import dataclasses
import textwrap
import time

import pytest

from cluster.config import ConfigError, load_config
from cluster.spec import rollout_spec
from rewards import FORMATS, RewardSample, RewardTerm, build_rewards, motivation_text, score_samples, strip_thinking
from rewards.registry import Reward, RewardScores
from rollout.protocols import PROTOCOLS
from rollout.protocols.motif import SYSTEM_PROMPT, motif_response_format
from rollout.records import SamplingSpec

USER_REWARDS = textwrap.dedent('''
    import time

    def length_bonus(sample):
        """0.01 per character of the response, at most 1."""
        return min(1.0, len(sample.response) / 100)

    def explodes(sample):
        """1 unless the response says boom."""
        if "boom" in sample.response:
            raise RuntimeError("boom in " + sample.question)
        return 1.0

    def hangs(sample):
        """1 unless the response asks it to sleep."""
        if "sleep" in sample.response:
            time.sleep(600)
        return 1.0

    def junk(sample):
        """Returns something that is not a number when the response says junk."""
        return "not a number" if "junk" in sample.response else 1.0

    def undocumented(sample):
        return 0.0
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return str(path)


FORMAT_CASES = {
    "reasoning_answer": (
        "<reasoning>step 1\nstep 2</reasoning>\n<answer>\\boxed{3}\n</answer>\n",
        ["<reasoning>a</reasoning><answer>1</answer><answer>2</answer>",
         "<answer>1</answer><reasoning>a</reasoning>",
         "<reasoning></reasoning><answer>1</answer>",
         "text before <reasoning>a</reasoning><answer>1</answer>",
         "<reasoning>a</reasoning><progress>p</progress>"],
    ),
    "reasoning_progress": (
        "<reasoning>step one\nstep two</reasoning>\n<progress>we know x = 3\nand y = 4</progress>",
        ["<reasoning>a</reasoning><progress>p</progress><progress>again</progress>",
         "<progress>p</progress><reasoning>r</reasoning>",
         "<reasoning>a <reasoning>b</reasoning><progress>p</progress>",
         "<reasoning>a</reasoning><answer>1</answer>"],
    ),
    "reasoning_progress_or_answer": (
        "<reasoning>two steps\nhere</reasoning>\n<progress>after b: x=3</progress>",
        ["<reasoning>a</reasoning><progress>p</progress><answer>1</answer>",
         "<reasoning>a</reasoning>",
         "<progress>p</progress>"],
    ),
    "think_response": (
        "<think>the steps\nworked out</think>\nThe answer is 7.\nThat is all.",
        ["The answer is 7.",
         "<think>a</think>",
         "<think>a</think>  \n ",
         "<think>a</think>b<think>c</think>d",
         "<think>a</think>b</think>",
         "<think>unfinished thought, the answer is 7.",
         "<think></think>b"],
    ),
    "response": (
        "The answer is 7.\nThat is all.",
        ["", "  \n", "<think>a</think>b", "b</think>"],
    ),
    "reasoning_answer_verify": (
        "<reasoning>2+2\nis 4</reasoning>\n<answer>\\boxed{4}</answer>\n<verify> correct </verify>",
        ["<reasoning>a</reasoning><answer>4</answer><verify>maybe</verify>",
         "<reasoning>a</reasoning><answer>4</answer>",
         "<reasoning>a</reasoning><answer>4</answer><verify>wrong</verify><verify>correct</verify>"],
    ),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_accepts_its_multiline_shape_once_and_nothing_else(name):
    good, bad = FORMAT_CASES[name]
    spec = FORMATS[name]
    assert spec(good) == 1.0
    assert [spec(text) for text in bad] == [0.0] * len(bad)
    assert spec.description.endswith(".") and spec.description.count(". ") == 0  # one sentence


def test_format_patterns_are_fast_on_hostile_text():
    start = time.monotonic()
    for spec in FORMATS.values():
        spec("<reasoning>" + "x" * 200_000)
        spec("<reasoning>" * 20_000)
        spec(" " * 200_000)
        spec("<think>a</think>b" + " " * 200_000 + "<think>")
    strip_thinking("<reasoning>" * 20_000 + "<answer>" * 20_000)
    assert time.monotonic() - start < 5


def test_strip_thinking_keeps_only_the_answer():
    assert strip_thinking("<reasoning>long\nthought</reasoning>\n<answer>\nParis.\n</answer>") == "Paris."
    assert strip_thinking("<think>hmm</think>Paris is the capital.") == "Paris is the capital."
    assert strip_thinking("Sure. <reasoning>unfinished thought") == "Sure."
    assert strip_thinking("no tags at all") == "no tags at all"


def sample(response, finals=None, gold="4", question="What is 2+2?"):
    return RewardSample(question, gold, response, tuple(finals or [response]), "reasoning_answer")


def test_weighted_sum_and_metrics_per_component(user_file):
    terms = [
        RewardTerm("format", weight=0.5),
        RewardTerm("accuracy", weight=2.0),
        RewardTerm(f"{user_file}:length_bonus", weight=0.1),
    ]
    rewards = build_rewards(terms, "reasoning_answer")
    good = "<reasoning>2+2</reasoning><answer>\\boxed{4}</answer>"
    samples = [
        sample(good),
        sample("the answer is 5"),
        # MOTIF: the response carries progress; accuracy is the mean over its k final answers.
        RewardSample("What is 2+2?", "4", "<reasoning>r</reasoning><progress>p</progress>",
                     ("\\boxed{4}", "\\boxed{5}", "\\boxed{4.0}", "none"), "reasoning_progress"),
    ]
    scored = score_samples(rewards, samples)
    totals, metrics = scored.totals, scored.metrics
    lengths = [min(1.0, len(s.response) / 100) for s in samples]
    expected = [0.5 * 1 + 2.0 * 1 + 0.1 * lengths[0], 0 + 0 + 0.1 * lengths[1], 0.5 * 1 + 2.0 * 0.5 + 0.1 * lengths[2]]
    assert totals == pytest.approx(expected)
    assert metrics["reward"] == pytest.approx(sum(expected) / 3)
    assert metrics["reward/format"] == pytest.approx(2 / 3)
    assert metrics["reward/accuracy"] == pytest.approx(1.5 / 3)
    assert metrics["reward/length_bonus"] == pytest.approx(sum(lengths) / 3)
    assert (metrics["reward/accuracy/correct"], metrics["reward/accuracy/wrong"], metrics["reward/accuracy/no_answer"]) == (3, 2, 1)


def test_user_reward_that_raises_hangs_or_returns_junk_costs_one_sample_not_the_run(user_file, caplog):
    terms = [RewardTerm(f"{user_file}:{name}", timeout_s=2.0) for name in ("explodes", "hangs", "junk")]
    rewards = build_rewards(terms, "reasoning_answer")
    samples = [sample("fine"), sample("boom"), sample("please sleep"), sample("junk")]
    start = time.monotonic()
    scored = score_samples(rewards, samples)
    totals, metrics = scored.totals, scored.metrics
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed
    assert totals == [3.0, 2.0, 2.0, 2.0]
    assert metrics["reward/explodes/error"] == 1 and metrics["reward/explodes/ok"] == 3
    assert metrics["reward/hangs/timeout"] == 1 and metrics["reward/hangs/ok"] == 3
    assert metrics["reward/junk/error"] == 1
    assert "boom in What is 2+2?" in caplog.text and "not a finite number" in caplog.text
    # The pool replaced the worker it killed: the next batch is scored normally.
    assert score_samples(rewards, [sample("fine")]).totals == [3.0]


def test_a_component_failing_on_the_whole_batch_is_counted_and_scored_zero(caplog):
    def broken(samples):
        raise ConnectionError("reward model actor died")

    rewards = [Reward("rm", 1.0, "a broken reward model.", broken),
               Reward("one", 1.0, "always 1.", lambda samples: RewardScores([1.0] * len(samples)))]
    scored = score_samples(rewards, [sample("a"), sample("b")])
    totals, metrics = scored.totals, scored.metrics
    assert totals == [1.0, 1.0]
    assert metrics["reward/rm/batch_failed"] == 2
    assert "reward model actor died" in caplog.text


@pytest.mark.parametrize("component,message", [
    ("{name: 'USER:missing'}", "has no function missing"),
    ("{name: 'USER:undocumented'}", "give it a description"),
    ("{name: 'nowhere.py:f'}", "file nowhere.py not found"),
    ("{name: 'USER:length_bonus', weight: .nan}", "weight must be a finite number"),
    ("{name: 'USER:length_bonus', timeout_s: 0}", "timeout_s must be > 0"),
    ("{name: accuracy, model: some/model}", "only for it"),
    ("{name: format, overlong_limit: 10}", "overlong_limit and overlong_buffer are settings of overlong"),
    ("{name: overlong, overlong_buffer: 41}", "overlong_buffer in 0..overlong_limit, got 40 and 41"),
    ("{name: overlong, overlong_limit: 0}", "overlong_limit must be >= 1"),
])
def test_reward_config_errors_are_named(user_file, component, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cluster/configs/demo.yaml", [f"reward.components=[{component.replace('USER', user_file)}]"])


def test_user_reward_from_config_with_description(user_file):
    config = load_config("cluster/configs/demo.yaml", [
        f"reward.components=[{{name: '{user_file}:undocumented', description: 'always 0.'}}]"
    ])
    (reward,) = build_rewards(config.reward.components, "reasoning_answer")
    assert (reward.name, reward.description) == ("undocumented", "always 0.")


def test_motivation_text_follows_the_configured_rewards(user_file):
    base = ["reward.motivation=true"]
    default = load_config("cluster/configs/demo.yaml", base)
    reweighted = load_config("cluster/configs/demo.yaml", base + [
        f"reward.components=[{{name: format, weight: 0.2}}, {{name: accuracy}}, {{name: '{user_file}:length_bonus'}}]"
    ])
    single_round = load_config("cluster/configs/demo.yaml", base + ["rollout.rounds=1"])

    def prompt(config):
        rewards = build_rewards(config.reward.components, motif_response_format(config.rollout.rounds))
        return rollout_spec(config, rewards).system_prompt, rewards

    texts = {}
    for name, config in [("default", default), ("reweighted", reweighted), ("single_round", single_round)]:
        system_prompt, rewards = prompt(config)
        assert system_prompt.startswith(SYSTEM_PROMPT)
        assert motivation_text(rewards) in system_prompt
        for reward in rewards:
            assert f"{reward.name} (weight {reward.weight:g}): {reward.description}" in system_prompt
        texts[name] = system_prompt
    assert len(set(texts.values())) == 3
    assert "<progress>" in texts["default"] and "<progress>" not in texts["single_round"]
    assert "format (weight 0.2)" in texts["reweighted"] and "0.01 per character" in texts["reweighted"]
    off = load_config("cluster/configs/demo.yaml", ["reward.motivation=false"])
    assert rollout_spec(off, build_rewards(off.reward.components, "reasoning_progress")).system_prompt == SYSTEM_PROMPT


MOTIVATED = SYSTEM_PROMPT + "\n\nYour response will be scored by the weighted sum of these rewards:\n"
# The demo's rewards (format 0.2, accuracy 1.0) told in each mode, round 1 (progress) and MOTIF's last round.
MOTIVATION_PROMPTS = {
    "none": (SYSTEM_PROMPT, SYSTEM_PROMPT),
    "consistent": (
        MOTIVATED + "- format (weight 0.2): 1 if the response is exactly one <reasoning> block followed by one "
        "<progress> block, else 0.\n- accuracy (weight 1): the share of the final answers reached from the response "
        "whose last \\boxed{} value equals the reference answer mathematically, from 0 to 1.",
        MOTIVATED + "- format (weight 0.2): 1 if the response is exactly one <reasoning> block followed by one "
        "<answer> block, else 0.\n- accuracy (weight 1): the share of the final answers reached from the response "
        "whose last \\boxed{} value equals the reference answer mathematically, from 0 to 1."),
    "mismatched": (
        MOTIVATED + "- format (weight 1): 1 if the response is exactly one <reasoning> block followed by one "
        "<progress> block, else 0.\n- accuracy (weight 0.2): the share of the final answers reached from the "
        "response whose last \\boxed{} value equals the reference answer mathematically, from 0 to 1.",
        MOTIVATED + "- format (weight 1): 1 if the response is exactly one <reasoning> block followed by one "
        "<answer> block, else 0.\n- accuracy (weight 0.2): the share of the final answers reached from the "
        "response whose last \\boxed{} value equals the reference answer mathematically, from 0 to 1."),
    "misleading": (
        MOTIVATED + "- format (weight 0.2): 0 if the response is exactly one <reasoning> block followed by one "
        "<progress> block, else 1.\n- accuracy (weight 1): the share of the final answers reached from the response "
        "whose last \\boxed{} value does not equal the reference answer mathematically, from 0 to 1.",
        MOTIVATED + "- format (weight 0.2): 0 if the response is exactly one <reasoning> block followed by one "
        "<answer> block, else 1.\n- accuracy (weight 1): the share of the final answers reached from the response "
        "whose last \\boxed{} value does not equal the reference answer mathematically, from 0 to 1."),
    "Box the answer; a wrong one scores 0.": (SYSTEM_PROMPT + "\n\nBox the answer; a wrong one scores 0.",) * 2,
}


def demo_prompts(*overrides: str) -> tuple[str, str]:
    """The demo's (round-1, last-round) system prompts: MOTIF, 3 rounds."""
    config = load_config("demo", list(overrides))
    spec = rollout_spec(config, build_rewards(config.reward.components, "reasoning_progress", config.rollout.max_tokens))
    return spec.system_prompt, spec.final_system_prompt


@pytest.mark.parametrize("mode", MOTIVATION_PROMPTS)
def test_each_motivation_mode_writes_its_system_prompt(mode):
    assert demo_prompts(f"reward.motivation='{mode}'") == MOTIVATION_PROMPTS[mode]


def test_motivation_true_and_false_still_load_as_consistent_and_none():
    for written, mode in [("true", "consistent"), ("false", "none")]:
        assert load_config("demo", [f"reward.motivation={written}"]).reward.motivation == mode
        assert demo_prompts(f"reward.motivation={written}") == MOTIVATION_PROMPTS[mode]
    assert not load_config("demo", ["reward.motivation=none"]).reward.motivated


def test_misleading_negates_a_users_reward_generically(user_file):
    rewards = build_rewards([RewardTerm(f"{user_file}:length_bonus"), RewardTerm("overlong")], "reasoning_answer", 40)
    assert motivation_text(rewards, mode="misleading").splitlines()[1:] == [
        "- length_bonus (weight 1): the negative of this score: 0.01 per character of the response, at most 1.",
        "- overlong (weight 1): 0 for a response of at most 32 tokens, rising linearly to 1 at 40 tokens and beyond."]


@pytest.mark.parametrize("overrides,message", [
    (["reward.motivation=misleadng"], r"reward.motivation 'misleadng' is not one of none, consistent, mismatched, "
                                      r"misleading; did you mean misleading\?"),
    (["reward.motivation=3"], "reward.motivation: expected str, got int 3"),
    (["reward.motivation=' '"], "reward.motivation is empty"),
    (["reward.motivation=mismatched", "reward.components=[{name: format}, {name: accuracy}]"],
     r"the weights \[1.0, 1.0\] read the same reversed"),
])
def test_a_bad_motivation_is_named_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("demo", overrides)
    assert "\n" not in str(error.value)


def test_motivation_reaches_the_model_prompt(rollout_pool, tiny_model):
    from transformers import AutoTokenizer

    config = load_config("cluster/configs/demo.yaml", ["reward.motivation=true", "rollout.rounds=1"])
    rewards = build_rewards(config.reward.components, "reasoning_answer")
    spec = rollout_spec(config, rewards)
    spec = dataclasses.replace(spec, first_round=SamplingSpec(max_tokens=2), samples_per_prompt=2)
    (episode, _) = PROTOCOLS["single"].rollout(rollout_pool.generate, ["What is 2+2?"], spec)
    prompt = AutoTokenizer.from_pretrained(tiny_model).decode(episode.root.completion.prompt_ids)
    assert motivation_text(rewards) in prompt


LENGTH_REWARD = '''
def answer_length(sample):
    """The final answer's length in characters over 100."""
    return len(sample.response) / 100
'''


def test_credit_reads_the_configured_rewards_and_the_grader_is_never_called(tmp_path, monkeypatch):
    """every_round trains each chain by its final answer's score under the configured components: with a reward
    of length only, the chain advantages are the answers' lengths normalised within each sample's chains."""
    import rewards.grading
    from learner.advantages import grpo_advantages
    from learner.credit import CREDIT
    from rollout.records import Completion, Episode, Turn

    def no_grading(*_):
        raise AssertionError("the math grader was called")

    monkeypatch.setattr(rewards.grading, "default_grader", no_grading)
    (tmp_path / "length.py").write_text(LENGTH_REWARD)
    configured = build_rewards([RewardTerm(f"{tmp_path / 'length.py'}:answer_length", weight=2.0)], "reasoning_progress")
    finals = [["a" * 10, "a" * 30], ["a" * 5, "a" * 5, "a" * 20]]
    samples = [RewardSample("q", "4", "<progress>p</progress>", tuple(f), "reasoning_progress") for f in finals]
    scored = score_samples(configured, samples, final_format="reasoning_answer")
    assert scored.finals == [[pytest.approx(2.0 * len(t) / 100) for t in f] for f in finals]

    def turn(text: str, index: int, parent: int | None) -> Turn:
        return Turn(Completion([1], [2, 3], text, [0.0, 0.0], "stop", 1), "m", index, parent, 0.8)

    episodes = [Episode(i, [turn("r1", 1, None)] + [turn(t, 2, 0) for t in f]) for i, f in enumerate(finals)]
    trained = CREDIT["every_round"](episodes, [0.5, -0.5], final_scores=scored.finals, estimator=grpo_advantages,
                                    norm_by_std=True)
    expected = grpo_advantages([s for f in scored.finals for s in f], [0, 0, 1, 1, 1]).tolist()
    assert [s.advantage for s in trained[2:]] == pytest.approx(expected)
    assert expected[0] < 0 < expected[1] and expected[2] == expected[3] < 0 < expected[4]


def hand_overlong(length: int, limit: int, buffer: int) -> float:
    """DAPO's eq. 13, case by case."""
    if length <= limit - buffer:
        return 0.0
    if length <= limit:
        return ((limit - buffer) - length) / buffer
    return -1.0


def test_overlong_penalty_follows_dapo_on_scripted_lengths():
    lengths = [0, 31, 32, 33, 36, 39, 40, 41, 100]
    (default,) = build_rewards([RewardTerm("overlong", weight=0.5)], "reasoning_progress", max_tokens=40)
    samples = [RewardSample("q", "4", "r", ("f",), "reasoning_progress", n, (n,)) for n in lengths]
    scored = score_samples([default], samples)
    assert [hand_overlong(n, 40, 8) for n in lengths] == [0, 0, 0, -1 / 8, -0.5, -7 / 8, -1, -1, -1]
    assert scored.totals == pytest.approx([0.5 * hand_overlong(n, 40, 8) for n in lengths])  # a fifth of 40
    assert scored.metrics["reward/overlong"] == pytest.approx(sum(hand_overlong(n, 40, 8) for n in lengths) / 9)

    # Its own limit and buffer over the rollout's; each final answer by its own length.
    (own,) = build_rewards([RewardTerm("overlong", overlong_limit=30, overlong_buffer=10)], "reasoning_progress", 40)
    finals = RewardSample("q", "4", "r", ("a", "b", "c"), "reasoning_progress", 25, (10, 25, 35))
    scored = score_samples([own], [finals], final_format="reasoning_answer")
    assert scored.totals == [hand_overlong(25, 30, 10)] == [-0.5]
    assert scored.finals == [[0.0, -0.5, -1.0]]
    assert own.description == "0 for a response of at most 20 tokens, falling linearly to -1 at 30 tokens and beyond."

    # No length known: the component fails on the batch (counted), never a made-up length.
    assert score_samples([own], [sample("x")]).metrics["reward/overlong/batch_failed"] == 1


def test_a_step_gives_the_rewards_the_trained_token_counts():
    from cluster.loop.step import reward_samples
    from cluster.tasks.data import Problem
    from rollout.protocols import PROTOCOLS
    from rollout.protocols.motif import MotifSpec
    from rollout.records import Completion, Episode, Turn

    def turn(tokens: int, index: int, parent: int | None) -> Turn:
        return Turn(Completion([1], [7] * tokens, "t", [0.0] * tokens, "stop", 1), "m", index, parent, 1.0)

    episode = Episode(0, [turn(3, 1, None), turn(5, 2, 0), turn(2, 2, 0)])
    (root_only,) = reward_samples([Episode(0, [turn(4, 1, None)])], [Problem("q", "4", 0)], PROTOCOLS["single"],
                                  MotifSpec(rounds=1))
    (motif,) = reward_samples([episode], [Problem("q", "4", 0)], PROTOCOLS["motif"], MotifSpec(rounds=2))
    assert (motif.response_tokens, motif.final_tokens) == (3, (5, 2))
    assert (root_only.response_tokens, root_only.final_tokens) == (4, (4,))


def test_a_final_whose_grading_failed_is_left_out_not_counted_wrong(monkeypatch):
    import rewards.motif
    from rewards.grading import GradeResult

    outcomes = {"\\boxed{4}": GradeResult(True, "correct"), "\\boxed{5}": GradeResult(False, "wrong"),
                "slow": GradeResult(False, "timeout")}
    monkeypatch.setattr(rewards.motif, "grade_batch", lambda texts, golds: [outcomes[t] for t in texts])
    accuracy = build_rewards([RewardTerm("accuracy")], "reasoning_progress")
    samples = [RewardSample("q", "4", "r", ("\\boxed{4}", "slow"), "reasoning_progress"),
               RewardSample("q", "4", "r", ("slow", "slow"), "reasoning_progress"),
               RewardSample("q", "4", "r", ("\\boxed{4}", "\\boxed{5}"), "reasoning_progress")]
    scored = score_samples(accuracy, samples, final_format="reasoning_answer")
    assert scored.totals == [1.0, 0.0, 0.5]  # the timed-out final leaves the mean
    assert scored.finals == [[1.0, None], [None, None], [1.0, 0.0]]
    assert scored.metrics["reward/accuracy/timeout"] == 3 and scored.metrics["reward/accuracy/ungraded_samples"] == 1
    assert scored.metrics["reward/unscored_finals"] == 3
