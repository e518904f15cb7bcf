"""Held-out evaluation during training: `eval/...` metrics at step 0, every `eval.every` steps and at the end,
and the comparison of training accuracy with held-out pass@1."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from cluster.config import RunConfig
from cluster.evaluation import EvalFailed, eval_problems, eval_spec, evaluate, t_quantile, write_eval
from rollout.protocols.motif import MotifSpec


def divergence(train_accuracy: list[float], before: tuple[float, float], after: tuple[float, float]
               ) -> tuple[float, float, float, float]:
    """(training accuracy, held-out pass@1, their gap, the gap's 95% half-width) over one window of steps.

    The window's steps sampled with the adapters of the steps before them, between the two evaluated ones
    (`before`, `after`: pass@1 and its stderr), so its training accuracy compares with the midpoint of the two
    evaluations, not with the later one alone: while the model learns, the later one is ahead of every step
    of the window. Noise: each step's accuracy is one draw of B questions (the steps are the units, the
    questions within a step are not independent of each other's difficulty draws); the two evaluations share
    their questions, so the midpoint's stderr is taken as the mean of theirs (fully correlated, the
    conservative end), and with few steps t replaces the normal quantile."""
    steps = len(train_accuracy)
    train = statistics.fmean(train_accuracy)
    held = (before[0] + after[0]) / 2
    stderr = math.hypot(statistics.stdev(train_accuracy) / math.sqrt(steps), (before[1] + after[1]) / 2)
    return train, held, train - held, t_quantile(0.975, steps - 1) * stderr


class HeldOutEval:
    """Evaluation during training: logs `eval/...` metrics and keeps each evaluation's samples."""

    def __init__(self, config: RunConfig, pool, spec: MotifSpec, run_dir: Path):
        self.every, self.pool, self.folder = config.eval.every, pool, run_dir / "eval"
        self.max_failed_fraction = config.eval.max_failed_fraction
        self.protocol = config.rollout.protocol
        self.spec = eval_spec(config, spec)
        self.problems = eval_problems(config) if self.every else []
        self.history: list[tuple[int, float]] = []
        e, r = config.eval, config.rollout
        # Held-out pass@1 and reward/accuracy measure the same thing (one chain's final answer from a round-1
        # sample, at the training temperatures), on held-out and on training questions, when eval samples as
        # training does; their gap is then the generalisation gap.
        self.comparable = e.temperature is None and e.rounds in (None, r.rounds) and e.max_tokens in (None, r.max_tokens)
        self.train_accuracy: list[float] = []
        self.last: tuple[float, float] | None = None  # the previous evaluation's pass@1 and stderr

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
                                        max_failed_fraction=self.max_failed_fraction, protocol=self.protocol)
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
        now = (summary["pass@1"], summary["pass@1_stderr"])
        if self.comparable and len(self.train_accuracy) > 1 and now[1] is not None and self.last is not None:
            train, held, gap, half = divergence(self.train_accuracy, self.last, now)
            metrics.update({"eval/train_accuracy": train, "eval/generalization_gap": gap})
            if abs(gap) > half:
                tqdm.write(f"note: training accuracy over the last {len(self.train_accuracy)} steps ({train:.3f}) "
                           f"differs from held-out pass@1 over the same stretch ({held:.3f}, between the "
                           f"evaluations before and after it) by {gap:+.3f}, beyond both estimates' noise "
                           f"(95%: +-{half:.3f}): training and held-out questions diverge")
        self.last = now if now[1] is not None else None
        self.train_accuracy = []
        return {**metrics, "time_eval": time.perf_counter() - t0}
