"""Failed generations never become results: a request that raises is a failed request, not a dead worker (no
replacement), retried alone within its attempts until only the poison request is aborted; an aborted continuation leaves its sample's reward instead of grading as wrong; an
evaluation with failed samples leaves them out, or writes no summary at all.

The rollout worker here is scripted (no engine): what is under test is the pool's and the driver's handling of
failures that a real engine produces only by accident."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cluster.tasks.data import Problem
from cluster.loop.step import attested, reward_samples
from cluster.evaluation import EvalFailed, evaluate
from rewards import RewardTerm, build_rewards, score_samples
from rollout.engine import ABORTED
from rollout.pool import RolloutPool
from rollout.protocols.motif import MotifSpec
from rollout.protocols import PROTOCOLS
from rollout.records import Completion, SamplingSpec

POISON, RAISE_ONCE, ABORT_ONE = "POISON", "RAISE-ONCE", "ABORT-ONE"


@ray.remote(num_cpus=0)
class ScriptedWorker:
    """Answers every request with a well-formed round, except: a POISON question always raises, a RAISE-ONCE one
    raises the first time any worker sees it (a marker file), and the first continuation of an ABORT-ONE
    question comes back aborted, as vLLM reports an aborted request."""

    def __init__(self, index: int, marker: str):
        self.index, self.marker = index, Path(marker)

    def generate(self, conversations, spec: SamplingSpec, use_adapter: bool = True, seed=None):
        groups = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            if POISON in text:
                raise ValueError("scripted engine failure")
            if RAISE_ONCE in text and not self.marker.exists():
                self.marker.write_text("raised")
                raise RuntimeError("scripted one-off engine failure")
            final = "This is round 2" in text
            body = "<reasoning>4</reasoning><answer>\\boxed{4}</answer>" if final else \
                "<reasoning>2+2</reasoning><progress>x=4</progress>"
            groups.append([
                Completion([1, 2], [3], "" if final and ABORT_ONE in text and j == 0 else body, [-0.1],
                           ABORTED if final and ABORT_ONE in text and j == 0 else "stop", 0, "", self.index)
                for j in range(spec.n)
            ])
        return groups

    def load_adapter_payload(self, payload):
        return ""


def test_poison_request_alone_is_aborted_and_aborted_continuations_leave_the_reward(ray_session, tmp_path):
    marker = str(tmp_path / "raised-once")
    pool = RolloutPool(lambda index: ScriptedWorker.remote(index, marker), 1, request_timeout_s=60)
    questions = [f"q0 {POISON}", "q1", f"q2 {ABORT_ONE}", f"q3 {RAISE_ONCE}"]
    spec = MotifSpec(samples_per_prompt=2, continuations=2, rounds=2,
                     first_round=SamplingSpec(max_tokens=8), continuation=SamplingSpec(max_tokens=8))
    pool.begin("train", 1)
    trajectories = PROTOCOLS["motif"].rollout(pool.generate, questions, spec)
    counters = pool.take_counters()

    aborted = {questions[t.prompt_index] for t in trajectories
               for turn in t.turns if turn.completion.finish_reason == ABORTED}
    assert aborted == {questions[0], questions[2]}  # the poison, and the one scripted continuation abort
    assert all(t.root.completion.finish_reason == ABORTED and not t.chains() for t in trajectories if t.prompt_index == 0)
    assert all(t.root.completion.finish_reason == "stop" for t in trajectories if t.prompt_index != 0)
    # Round 1: one poison request, whose aborted samples are not continued. Nothing else failed, and the worker,
    # alive throughout, was never replaced: the shard went again request by request, the poison alone 3 times.
    assert counters["rollout/failed_requests"] == 1
    assert counters["rollout/worker_restarts"] == 0
    assert counters["rollout/retried_requests"] == 4 + 1 + 1  # the shard one by one; RAISE-ONCE and POISON again

    kept, dropped = attested(trajectories, "", "")
    assert dropped["failed"] == 2 and dropped["dropped_continuations"] == 2
    assert sorted({t.prompt_index for t in kept}) == [1, 2, 3]
    batch = [Problem(q, "4", i) for i, q in enumerate(questions)]
    rewards = build_rewards([RewardTerm("accuracy")], spec.response_format)
    scored = score_samples(rewards, reward_samples(kept, batch, PROTOCOLS["motif"], spec))
    totals, _ = scored.totals, scored.metrics
    # The ABORT-ONE samples keep one finished continuation, which is right: accuracy 1, not 0.5.
    assert [len(t.chains()) for t in kept if t.prompt_index == 2] == [1, 1]
    assert totals == [1.0] * len(kept)
    pool.shutdown()


class FailingPool:
    """Returns `failed` aborted samples among the first question's, the rest right."""

    def __init__(self, failed: int):
        self.failed = failed

    def begin(self, *key):
        pass

    def generate(self, conversations, spec, use_adapter=True):
        done = Completion([1], [2], "\\boxed{4}", [-0.1], "stop", 0)
        lost = Completion([1], [], "", [], ABORTED, 0)
        return [[lost if b == 0 and j < self.failed else done for j in range(spec.n)] for b in range(len(conversations))]


@pytest.mark.parametrize("failed", [1, 3])
def test_evaluation_leaves_failed_samples_out_or_writes_nothing(failed):
    problems = [Problem(f"q{i}", "4", i) for i in range(8)]
    spec = MotifSpec(samples_per_prompt=4, continuations=1, rounds=1, first_round=SamplingSpec(max_tokens=8),
                     continuation=SamplingSpec(max_tokens=8))
    if failed == 3:  # 3 of 32 samples: above a 5% allowance
        with pytest.raises(EvalFailed, match="3 of 32 samples failed"):
            evaluate(FailingPool(failed), problems, spec, max_failed_fraction=0.05)
        return
    summary, samples = evaluate(FailingPool(failed), problems, spec, max_failed_fraction=0.05)
    assert summary["failed_requests"] == 1 and summary["failed_questions"] == 1
    assert summary["questions"] == 7 and summary["pass@1"] == 1.0  # never graded as wrong
    assert sum(s["failed"] for s in samples) == 1


def test_a_worker_that_cannot_start_ends_the_command_with_its_own_error(tiny_model, tmp_path):
    """vLLM refuses the engine (max_model_len above the model's): one line with vLLM's reason, no replacement
    loop, no summary."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "eval"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "eval", "--config", "tests/configs/smoke.yaml", f"model.path={tiny_model}",
         "rollout.max_model_len=100000", "eval.limit=2", "eval.n=1", f"eval.output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("motif: rollout worker 0 failed to start:") and "max_model_len (100000)" in last, last
    assert "starting a replacement" not in done.stdout + done.stderr
    assert not (out / "summary.json").exists()
    assert time.monotonic() - started < 300


def test_a_new_worker_removes_adapter_folders_of_workers_that_are_gone():
    import os
    import shutil

    from rollout.actor import local_adapter_root

    first = local_adapter_root()
    gone = first.with_name("motif-adapters-4999999-xyz")  # above any pid_max: a worker that no longer exists
    gone.mkdir()
    second = local_adapter_root()
    try:
        assert not gone.exists() and first.exists()  # this process is alive: its folder stays
        assert second.name.startswith(f"motif-adapters-{os.getpid()}-")
    finally:
        shutil.rmtree(first, ignore_errors=True)
        shutil.rmtree(second, ignore_errors=True)


def test_training_accuracy_far_from_held_out_is_reported_during_training(tmp_path, capsys):
    """Held-out pass@1 (here 1.0: every scripted answer is right) against the steps' reward/accuracy between two
    evaluations: a gap beyond both estimates' noise is logged and said on the console; one within it is only
    logged; the first evaluation has nothing to compare."""
    from cluster.config import load_config
    from cluster.loop.held_out import HeldOutEval
    from cluster.spec import rollout_spec

    config = load_config("tests/configs/smoke.yaml", ["data.path=toy", "eval.every=10", "eval.limit=8", "eval.n=4",
                                                      "rollout.rounds=1"])
    held_out = HeldOutEval(config, FailingPool(0), rollout_spec(config, []), tmp_path)
    held_out.problems = [Problem(p.question, "4", p.row) for p in held_out.problems]  # the pool always says 4
    assert "eval/generalization_gap" not in held_out.run(0)
    for accuracy in (0.20, 0.30, 0.25, 0.35):
        held_out.track({"reward/accuracy": accuracy})
    metrics = held_out.run(10)
    assert metrics["eval/pass@1"] == 1.0 and metrics["eval/train_accuracy"] == 0.275
    assert metrics["eval/generalization_gap"] == -0.725
    assert "differs from held-out pass@1 over the same stretch (1.000" in capsys.readouterr().out
    for accuracy in (0.99, 1.0, 0.98, 1.0):
        held_out.track({"reward/accuracy": accuracy})
    assert held_out.run(20)["eval/train_accuracy"] > 0.97
    assert "differs" not in capsys.readouterr().out


def test_a_run_with_nothing_to_learn_from_stops_with_the_resume_command(tmp_path):
    """Every prompt longer than the engine's context: each step is skipped, and after max_skipped_steps in a row
    the run ends (exit 1) naming why and how to resume, instead of spinning through its steps."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "train", "--config", "tests/configs/smoke.yaml", f"output_dir={run_dir}",
         f"model.tiny_model_dir={tmp_path / 'tiny'}", "steps=10", "rollout.max_model_len=64", "rollout.max_tokens=16",
         "max_skipped_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("motif: 2 steps in a row had nothing to learn from (step 2: all 2 prompts exceed"), last
    assert f"motif train --config {run_dir / 'config.yaml'} --resume auto" in last
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and all('"skipped_step": 1.0' in s for s in steps)


def test_the_divergence_estimate_equals_a_hand_computation_with_identical_samples_per_question():
    """Each question's n samples identical (all right or all wrong): the question, not the sample, is the unit,
    so the evaluation's stderr is the sd of the per-question accuracies over sqrt(questions), far above the
    binomial sqrt(p(1-p)/(questions*n)) that independent samples would give. The note's estimate is that, with
    the steps' spread, against the midpoint of the evaluations around the steps."""
    import math

    from cluster.evaluation import summarize, t_quantile
    from cluster.loop.held_out import divergence

    def scripted(right: list[bool], n: int = 4) -> dict:
        samples = [{"question_id": q, "correct": ok, "answer": "4" if ok else "5", "tokens": [3], "format_ok": True,
                    "truncated": False, "prompt_too_long": False} for q, ok in enumerate(right) for _ in range(n)]
        return summarize(samples, n)

    before, after = scripted([True, False, False, False, True, False]), scripted([True, True, False, True, True, False])
    # Hand: per-question accuracies 0/1; sd with Q-1 = 5.
    for summary, p in ((before, 2 / 6), (after, 4 / 6)):
        sd = math.sqrt((6 * p * (1 - p) * 6 / 5) / 6)  # sum of squared deviations of Q 0/1 values over Q-1
        assert summary["pass@1"] == pytest.approx(p)
        assert summary["pass@1_stderr"] == pytest.approx(sd / math.sqrt(6))
        assert summary["pass@1_stderr"] > 1.9 * math.sqrt(p * (1 - p) / 24)  # not the independent-sample error
    steps = [0.40, 0.55, 0.45, 0.60]
    train, held, gap, half = divergence(steps, (before["pass@1"], before["pass@1_stderr"]),
                                        (after["pass@1"], after["pass@1_stderr"]))
    mean = sum(steps) / 4
    steps_se = math.sqrt(sum((a - mean) ** 2 for a in steps) / 3) / 2
    midpoint_se = (before["pass@1_stderr"] + after["pass@1_stderr"]) / 2
    assert (train, held, gap) == pytest.approx((0.5, 0.5, 0.0))
    assert half == pytest.approx(t_quantile(0.975, 3) * math.sqrt(steps_se ** 2 + midpoint_se ** 2))

