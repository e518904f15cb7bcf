"""Held-out evaluation during training: `eval/...` metrics at step 0, every `eval.every` steps and at the end,
and the comparison of training accuracy with held-out pass@1."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.evaluation import EvalFailed, eval_problems, eval_spec, evaluate, write_eval
from rollout.protocols import MotifSpec


class HeldOutEval:
    """Evaluation during training: logs `eval/...` metrics and keeps each evaluation's samples."""

    def __init__(self, config: RunConfig, pool, spec: MotifSpec, run_dir: Path):
        self.every, self.pool, self.folder = config.eval.every, pool, run_dir / "eval"
        self.max_failed_fraction = config.eval.max_failed_fraction
        self.spec = eval_spec(config, spec)
        self.problems = eval_problems(config) if self.every else []
        self.history: list[tuple[int, float]] = []
        e, r = config.eval, config.rollout
        # Held-out pass@1 and reward/accuracy measure the same thing (one chain's final answer from a round-1
        # sample, at the training temperatures), on held-out and on training questions, when eval samples as
        # training does; their gap is then the generalisation gap.
        self.comparable = e.temperature is None and e.rounds in (None, r.rounds) and e.max_tokens in (None, r.max_tokens)
        self.train_accuracy: list[float] = []

    def track(self, metrics: dict) -> None:
        """Collect a step's training accuracy for the next evaluation's comparison."""
        if "reward/accuracy" in metrics:
            self.train_accuracy.append(metrics["reward/accuracy"])

    def due(self, step: int, last: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == last)

    def run(self, step: int) -> dict:
        # Every evaluation samples under the same seeds: the difference between two reflects the model more
        # than the dice.
        t0 = time.perf_counter()
        try:
            summary, samples = evaluate(self.pool, self.problems, self.spec, desc=f"eval step {step}", key=("eval",),
                                        max_failed_fraction=self.max_failed_fraction)
        except EvalFailed as e:
            tqdm.write(f"motif: {e}")
            return {"eval/failed": 1.0, "time_eval": time.perf_counter() - t0}
        write_eval(self.folder / f"step-{step}", summary, samples)
        self.history.append((step, summary["pass@1"]))
        n = summary["n"]
        interval = f" [{summary['pass@1_lo']:.3f}, {summary['pass@1_hi']:.3f}]" if summary["pass@1_lo"] is not None else ""
        tqdm.write(f"eval step {step} | pass@1 {summary['pass@1']:.3f}{interval} | maj@{n} {summary[f'maj@{n}']:.3f} "
                   f"| format {summary['format_rate']:.2f}")
        metrics = {f"eval/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        if self.comparable and len(self.train_accuracy) > 1 and summary["pass@1_stderr"] is not None:
            train = statistics.fmean(self.train_accuracy)
            gap = train - summary["pass@1"]
            # Both are estimates: the steps' accuracies vary from batch to batch, the evaluation over questions.
            stderr = math.hypot(statistics.stdev(self.train_accuracy) / math.sqrt(len(self.train_accuracy)),
                                summary["pass@1_stderr"])
            metrics.update({"eval/train_accuracy": train, "eval/generalization_gap": gap})
            if abs(gap) > 1.96 * stderr:
                tqdm.write(f"note: training accuracy over the last {len(self.train_accuracy)} steps ({train:.3f}) "
                           f"differs from held-out pass@1 by {gap:+.3f}, beyond both estimates' noise "
                           f"(95%: +-{1.96 * stderr:.3f}): training and held-out questions diverge")
        self.train_accuracy = []
        return {**metrics, "time_eval": time.perf_counter() - t0}
