"""What a run would otherwise learn only from its workers fails in preflight, before Ray starts, in one line:
sampling settings vLLM refuses and evaluation data that cannot be used. `motif eval` applies only the config
rules that concern evaluation. Nothing here starts Ray: `motif eval` stops where its run would begin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from cluster import cli, preflight
from cluster.config import BadInput, ConfigError, load_config
from tests.conftest import REPO

SMOKE = "tests/configs/smoke.yaml"


class Started(Exception):
    """`motif eval` got past preflight."""


@pytest.fixture
def motif_eval(monkeypatch, tmp_path, capsys):
    """`motif eval --config SMOKE ARGS` in this process, up to where the evaluation would start Ray: (exit code,
    stderr lines); the code is None when the command got past preflight."""
    import cluster.evaluation

    def started(config):
        raise Started

    monkeypatch.setattr(cluster.evaluation, "run_eval", started)
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "token"))  # set by cli for the process

    def run(*overrides: str):
        try:
            code = cli.main(["eval", "--config", SMOKE, "eval.limit=2", *overrides, f"output_dir={tmp_path / 'run'}"])
        except Started:
            code = None
        return code, capsys.readouterr().err.splitlines()

    return run


def train_config(tmp_path, *overrides: str):
    return load_config(SMOKE, [*overrides, f"output_dir={tmp_path / 'run'}"])


def test_sampling_vllm_refuses_fails_eval_in_one_line(motif_eval):
    code, err = motif_eval("eval.temperature=0", "eval.n=4")
    assert code == 2 and len(err) == 1, err
    assert "eval.n=4, eval.temperature=0" in err[0] and "n must be 1 when using greedy sampling" in err[0]
    # eval.temperature unset: the training temperature is the one vLLM sees, and is named
    code, err = motif_eval("rollout.temperature=0", "eval.n=4")
    assert code == 2 and len(err) == 1 and "eval.n=4, rollout.temperature=0" in err[0], err
    code, err = motif_eval("eval.max_tokens=-3", "eval.n=1")
    assert code == 2 and "eval.max_tokens=-3" in err[0] and "max_tokens must be at least 1" in err[0], err
    assert motif_eval("eval.temperature=0", "eval.n=1") == (None, [])  # greedy, one sample: accepted


def test_sampling_check_names_the_training_keys(tmp_path):
    """Training rules keep these settings from the command line; the check itself names each request's keys."""
    config = train_config(tmp_path)
    preflight.check_sampling(config, training=True)
    config.rollout.temperature = 0
    with pytest.raises(BadInput, match=r"rollout\.samples_per_prompt=4, rollout\.temperature=0, .*greedy"):
        preflight.check_sampling(config, training=True)
    config = train_config(tmp_path)
    config.rollout.continuation_temperature = 0
    with pytest.raises(BadInput, match=r"rollout\.continuations=2, rollout\.continuation_temperature=0, .*greedy"):
        preflight.check_sampling(config, training=True)


def test_training_checks_the_eval_sampling_only_when_it_evaluates(tmp_path):
    with pytest.raises(BadInput, match=r"eval\.n=4, eval\.temperature=0, .*greedy"):
        preflight.check_train(train_config(tmp_path, "eval.every=2", "eval.temperature=0"))
    preflight.check_train(train_config(tmp_path, "eval.every=0", "eval.temperature=0"))


def test_the_sampling_check_leaves_the_console_and_environment_as_they_were():
    """vLLM's import warns on CPU and edits os.environ, which Ray's processes would inherit: a fresh process
    shows both, and the check leaves neither behind."""
    code = ("import os, sys; from cluster.config import load_config; from cluster.preflight import check_sampling; "
            "assert 'vllm' not in sys.modules; before = dict(os.environ); "
            "config = load_config('tests/configs/smoke.yaml', ['eval.every=1']); "
            "config.rollout.temperature = 1e-6; check_sampling(config, training=True); "  # vLLM warns of 1e-6
            "assert 'vllm' in sys.modules and dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr[-3000:]


@pytest.mark.parametrize("overrides,expected", [
    (["eval.path={root}/nowhere.jsonl"], "eval.path {root}/nowhere.jsonl: no such file"),
    (["eval.path={root}/nowhere"], "eval.path {root}/nowhere, eval.split test: not a shipped dataset"),
    (["eval.split=validation"], "eval.split validation: dataset gsm8k has splits train, test"),
    (["data.path=toy", "eval.split=validation"], "eval.split validation: toy task split must be"),
    (["eval.path={root}/wrong-fields.jsonl"], "eval.path {root}/wrong-fields.jsonl: no usable problems"),
])
def test_eval_data_is_checked_in_preflight(overrides, expected, motif_eval, tmp_path):
    (tmp_path / "wrong-fields.jsonl").write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    overrides = [o.format(root=tmp_path) for o in overrides]
    code, err = motif_eval(*overrides)
    assert code == 2 and len(err) == 1 and expected.format(root=tmp_path) in err[0], err
    with pytest.raises(BadInput, match=re.escape(expected.format(root=tmp_path))):  # and training that evaluates
        preflight.check_train(train_config(tmp_path, "eval.every=2", *overrides))
    preflight.check_train(train_config(tmp_path, "eval.every=0", *overrides))  # a run that never evaluates


@pytest.mark.parametrize("overrides", [
    ["learner.credit=every_round", "rollout.continuation_top_p=0.9"],
    ["learner.credit=every_round", "rollout.continuation_policy=frozen_base"],
    ["learner.credit=every_round", "rollout.continuations=1"],
    ["rollout.samples_per_prompt=1"],
    ["rollout.top_p=0.9"],
    ["learner.finetune=full"],
])
def test_eval_applies_only_the_rules_of_evaluation(overrides, motif_eval, tmp_path):
    """Rules about what the learner trains on refuse these for training, not for evaluation: `motif eval` gets
    past config validation and fails in preflight on its (missing) eval.path instead."""
    code, err = motif_eval(*overrides, f"eval.path={tmp_path}/nowhere.jsonl")
    assert code == 2 and len(err) == 1, err
    assert "invalid config" not in err[0] and f"eval.path {tmp_path}/nowhere.jsonl: no such file" in err[0]
    assert load_config(SMOKE, overrides, purpose="eval")
    with pytest.raises(ConfigError):
        load_config(SMOKE, overrides)
