"""Config validation names what is wrong; malformed dataset rows are skipped, counted and named."""

from __future__ import annotations

import json

import pytest

from cluster.config import ConfigError, DataConfig, load_config
from cluster.tasks.data import load_problems


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config("cluster/configs/demo.yaml", ["rollout.rounds=3", "learner.learning_rate=2e-5", "steps=1"])
    assert (cfg.rollout.rounds, cfg.learner.learning_rate, cfg.steps) == (3, 2e-5, 1)


@pytest.mark.parametrize("override,message", [
    ("rollout.roundz=3", "unknown config key rollout.roundz"),
    ("rollout.rounds=three", "rollout.rounds: expected int"),
    ("rollout.samples_per_prompt=1", "samples_per_prompt must be >= 2"),
    ("rollout.continuation_policy=base", "continuation_policy"),
    ("learner.zero_stage=5", "zero_stage"),
    ("learner.mini_batch_size=0", "mini_batch_size"),
    ("learner.advantage_estimator=ppo", "advantage_estimator"),
    ("steps", "key=value"),
    ("rollout.temperature=0", "rollout.temperature must be > 0"),
    ("rollout.continuation_temperature=-1", "rollout.continuation_temperature must be > 0"),
    ("rollout.top_p=0.9", "rollout.top_p must be 1"),
    ("rollout.continuation_top_p=0", "rollout.continuation_top_p must be in"),
    ("eval.top_p=1.5", "eval.top_p must be in"),
    ("eval.n=0", "eval: temperature must be >= 0, n and rounds >= 1"),
    ("learner.finetune=full", "learner.finetune must be lora for training"),
    ("data.toy.operations=many", "data.toy.operations: expected int"),
    ("learner.credit=chains", "learner.credit 'chains' is not one of"),
    ("model.warm_start.operations=[0, 4]", "model.warm_start.operations must list toy difficulties"),
    ("rollout.max_num_seqs=0", "rollout.max_num_seqs must be >= 1"),
    ("cluster.learner_timeout_s=0", "cluster.learner_timeout_s must be > 0"),
    ("learner.policy_loss=sft", "policy_loss 'sft' is not one of"),
    ("learner.policy_loss=dpo", "learner.policy_loss=dpo trains the pairs that learner.credit=best_worst makes"),
    ("learner.credit=best_worst", "set both or neither, got policy_loss=clipped, credit=best_worst"),
    ("learner.loss_aggregation=seq_mean_token_sum_norm", "set learner.loss_scale_tokens"),
    ("learner.kl_estimator=k4", "kl_estimator 'k4'"),
    ("reward.motivation=[unclosed", "its value is not valid YAML"),
    ("model.warm_start.verdict_accuracy=2", r"verdict_accuracy must be in \[0, 1\]"),
    ("model.warm_start.markovian_rounds=0", "markovian_rounds must be >= 1"),
    ("model.warm_start.rlmt=maybe", "model.warm_start.rlmt: expected true or false"),
    ("traces.max_tries=0", "traces.max_tries must be >= 1"),
    ("learner.tis_cap=0", "learner.tis_cap must be > 0"),
    ("learner.correction=clip", "learner.correction 'clip' is not one of auto, none, tis, decoupled"),
    ("rollout.max_staleness=-1", "rollout.max_staleness must be >= 0"),
    ("learner.kl_in_reward_coef=-0.1", "learner.kl_in_reward_coef must be >= 0"),
    ("learner.mask_truncated=sometimes", "learner.mask_truncated: expected true or false"),
    ("logging.trackers=[comet]", "logging.trackers must list distinct names of tensorboard, wandb, mlflow"),
    ("logging.trackers=[wandb, wandb]", "logging.trackers must list distinct names"),
    ("logging.trackers=wandb", "logging.trackers: expected a list"),
    ("logging.project=' '", "logging.project must not be empty"),
    ("rollout.response_format=think_response", "rollout.response_format=think_response is not one "
                                               "rollout.protocol=motif writes"),
    ("reward.components=[{name: format, strict: true}]", "reward 'format': strict is a setting of reward_model"),
    ("reward.components=[{name: reward_model, model: m, strict: maybe}]",
     r"reward.components\[0\].strict: expected true or false"),
])
def test_invalid_config_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cluster/configs/demo.yaml", [override])


def test_a_single_round_is_asked_for_one_of_its_formats():
    for fmt in ("reasoning_answer", "think_response", "response"):
        assert load_config("demo", ["rollout.rounds=1", f"rollout.response_format={fmt}"]).rollout.response_format == fmt
    with pytest.raises(ConfigError, match="rollout.response_format must be one of reasoning_answer, think_response, "
                                          "response for rollout.protocol=single, got 'thinking'"):
        load_config("demo", ["rollout.rounds=1", "rollout.response_format=thinking"])


def test_the_rlmt_recipe_loads_with_the_papers_grpo_settings():
    config = load_config("rlmt-toy-grpo")
    r = config.rollout
    assert (r.protocol, r.response_format, r.samples_per_prompt, r.temperature) == ("single", "think_response", 8, 0.8)
    assert config.learner.kl_coef == 0.001 and config.model.warm_start.rlmt
    (model,) = [t for t in config.reward.components if t.name == "reward_model"]
    assert model.strict and {t.name: t.weight for t in config.reward.components}["accuracy"] == 0.0
    assert load_config("rlmt-toy-grpo", ["rollout.response_format=response"]).rollout.response_format == "response"


def test_the_rlmt_dpo_recipe_loads():
    config = load_config("rlmt-toy-dpo")
    assert (config.learner.policy_loss, config.learner.credit, config.rollout.response_format) == (
        "dpo", "best_worst", "think_response")


def test_cli_reports_invalid_config_without_starting(capsys):
    from cluster.cli import main

    assert main(["train", "--config", "cluster/configs/demo.yaml", "rollout.rounds=0"]) == 2
    assert "rollout.rounds must be >= 1" in capsys.readouterr().err


def test_malformed_rows_are_skipped_counted_and_named(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        json.dumps({"question": "What is 1+1?", "answer": "1+1=2\n#### 2"}),
        "{not json",
        json.dumps({"question": "", "answer": "#### 3"}),
        json.dumps({"question": "Q without marker", "answer": "4"}),
        json.dumps(["a", "list"]),
        json.dumps({"answer": "#### 5"}),
        json.dumps({"question": "What is 2*3?", "answer": "#### 6"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    problems, report = load_problems(DataConfig(path=str(path), gold_format="gsm8k"))
    assert [(p.question, p.gold, p.row) for p in problems] == [("What is 1+1?", "2", 0), ("What is 2*3?", "6", 6)]
    assert sum(report.skipped.values()) == 5
    summary = report.summary()
    assert "row 1: invalid JSON" in summary and "skipped 5 rows" in summary


def test_gsm8k_slice_loads_through_datasets():
    problems, report = load_problems(DataConfig(path="gsm8k", limit=10))
    assert len(problems) == 10 and not report.skipped and problems[0].gold == "72"


@pytest.mark.parametrize("name,split,rows,first_gold", [
    ("gsm8k", "train", 7473, "72"), ("gsm8k", "test", 1319, "18"),
    ("math500", "test", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"), ("aime24", "test", 30, "204"),
])
def test_shipped_datasets_load_by_name_with_their_fields(name, split, rows, first_gold):
    problems, report = load_problems(DataConfig(path=name, split=split))
    assert len(problems) == rows and not report.skipped
    assert problems[0].gold == first_gold


def test_shipped_data_matches_the_recorded_checksums():
    import hashlib
    import re

    from cluster.tasks.data import SHIPPED

    recorded = dict(re.findall(r"^\| (\S+\.jsonl) \| \d+ \| ([0-9a-f]{64}) \|$", (SHIPPED / "README.md").read_text(), re.M))
    assert len(recorded) == 4
    for name, digest in recorded.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name


def test_unknown_split_of_a_named_dataset_is_named():
    with pytest.raises(ValueError, match="math500 has splits test"):
        load_problems(DataConfig(path="math500", split="train"))


def test_plain_answers_are_accepted_without_a_gsm8k_marker(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": " 4 "}) + "\n")
    assert load_problems(DataConfig(path=str(path)))[0][0].gold == "4"


def test_training_every_round_needs_continuations_from_the_trained_policy():
    with pytest.raises(ConfigError, match="continuation_top_p=1"):
        load_config("demo", ["learner.credit=every_round", "rollout.continuation_top_p=0.9"])
    with pytest.raises(ConfigError, match="continuation_policy=current"):
        load_config("demo", ["learner.credit=every_round", "rollout.continuation_policy=frozen_base"])
    with pytest.raises(ConfigError, match="continuations >= 2"):
        load_config("demo", ["rollout.continuations=1"])  # every_round is the default
    assert load_config("demo").learner.credit == "every_round"
    # Round 1 alone is trained from any continuations, and one round has none to train.
    assert load_config("demo", ["learner.credit=first_round", "rollout.continuation_policy=frozen_base",
                                "rollout.continuation_top_p=0.9", "rollout.continuations=1"]).learner.credit == "first_round"
    assert load_config("demo", ["rollout.rounds=1", "rollout.continuation_top_p=0.9"]).rollout.rounds == 1
    assert load_config("motif-qwen2.5-3b-gsm8k").learner.credit == "first_round"  # the paper's setting


@pytest.mark.parametrize("override", [
    "learner.advantage_estimator=dr_grpo", "learner.advantage_estimator=rloo", "learner.advantage_estimator=reinforce_pp",
    "learner.policy_loss=ppo_clip", "learner.policy_loss=gspo", "learner.policy_loss=cispo",
    "learner.loss_aggregation=seq_mean_token_mean", "learner.kl_estimator=k2",
])
def test_every_objective_name_in_the_docs_is_accepted(override):
    key, value = override.split("=")
    assert getattr(load_config("cluster/configs/demo.yaml", [override]).learner, key.split(".")[1]) == value


def test_settings_written_before_a_field_compare_equal_at_its_default():
    from cluster.config import without_new_unset

    saved = {"rollout": {"rounds": 3}, "reward": {"components": [{"name": "format"}]}}
    defaults = {"rollout": {"dynamic_sampling": False, "dynamic_sampling_max_refills": 3}}
    now = {"rollout": {"rounds": 3, "dynamic_sampling": False, "dynamic_sampling_max_refills": 3, "tis_cap": None},
           "reward": {"components": [{"name": "format", "overlong_limit": None}]}}
    assert without_new_unset(saved, now, defaults) == saved
    changed = {"rollout": {"rounds": 3, "dynamic_sampling": True}, "reward": saved["reward"]}
    assert without_new_unset(saved, changed, defaults) != saved
    assert without_new_unset(saved, {**now, "rollout": {**now["rollout"], "dynamic_sampling": False}}) != saved
