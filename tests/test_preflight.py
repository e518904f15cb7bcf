"""What a run would otherwise learn only from its workers fails early, in one line: evaluation data that cannot be
used, before Ray starts; sampling settings vLLM refuses, as soon as a rollout worker is up (only the workers import
vLLM). `motif eval` applies only the config rules that concern evaluation. The in-process checks here start no Ray:
`motif eval` stops where its run would begin."""

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


def train_config(tmp_path, *overrides: str, purpose: str = "train"):
    return load_config(SMOKE, [*overrides, f"output_dir={tmp_path / 'run'}"], purpose=purpose)


class WorkerChecks:
    """What RolloutPool.sampling_refusals asks of a worker, run in this process: vLLM's own validation without
    starting an engine."""

    @staticmethod
    def sampling_refusals(specs):
        from rollout.engine import sampling_refusal

        return [sampling_refusal(spec) for spec in specs]


def test_sampling_vllm_refuses_is_one_line_naming_the_eval_keys(tmp_path):
    def refused(*overrides: str) -> str:
        with pytest.raises(BadInput) as error:
            preflight.check_sampling(train_config(tmp_path, *overrides, purpose="eval"), WorkerChecks, training=False)
        return str(error.value)

    refusal = refused("eval.temperature=0", "eval.n=4")
    assert "eval.n=4, eval.temperature=0" in refusal and "n must be 1 when using greedy sampling" in refusal
    # eval.temperature unset: the training temperature is the one vLLM sees, and is named
    assert "eval.n=4, rollout.temperature=0" in refused("rollout.temperature=0", "eval.n=4")
    refusal = refused("eval.max_tokens=-3", "eval.n=1")
    assert "eval.max_tokens=-3" in refusal and "max_tokens must be at least 1" in refusal
    # greedy, one sample: accepted
    preflight.check_sampling(train_config(tmp_path, "eval.temperature=0", "eval.n=1", purpose="eval"), WorkerChecks,
                             training=False)


def test_sampling_check_names_the_training_keys(tmp_path):
    """Training rules keep these settings from the command line; the check itself names each request's keys."""
    config = train_config(tmp_path)
    preflight.check_sampling(config, WorkerChecks, training=True)
    config.rollout.temperature = 0
    with pytest.raises(BadInput, match=r"rollout\.samples_per_prompt=4, rollout\.temperature=0, .*greedy"):
        preflight.check_sampling(config, WorkerChecks, training=True)
    config = train_config(tmp_path)
    config.rollout.continuation_temperature = 0
    with pytest.raises(BadInput, match=r"rollout\.continuations=2, rollout\.continuation_temperature=0, .*greedy"):
        preflight.check_sampling(config, WorkerChecks, training=True)


def test_training_checks_the_eval_sampling_only_when_it_evaluates(tmp_path):
    with pytest.raises(BadInput, match=r"eval\.n=4, eval\.temperature=0, .*greedy"):
        preflight.check_sampling(train_config(tmp_path, "eval.every=2", "eval.temperature=0"), WorkerChecks,
                                 training=True)
    preflight.check_sampling(train_config(tmp_path, "eval.every=0", "eval.temperature=0"), WorkerChecks,
                             training=True)


def test_a_run_vllm_refuses_ends_in_one_line_once_its_workers_are_up_and_its_driver_never_imports_vllm(tmp_path):
    """`motif train` through real workers: exit code 2, one line, no checkpoint; the driver process has not
    imported vLLM (about 7 s of every start on 2 cores)."""
    code = ("import sys; from cluster.cli import main; code = main(sys.argv[1:]); "
            "print('vllm in the driver' if 'vllm' in sys.modules else 'no vllm in the driver'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "train", "--config", SMOKE, "eval.every=2",
                           "eval.temperature=0", "eval.n=4", f"output_dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("motif: eval.n=4, eval.temperature=0") and "vLLM refuses" in lines[0], lines
    assert done.stdout.splitlines()[-1] == "no vllm in the driver", done.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


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
