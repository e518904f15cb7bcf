"""Learning benchmark: single-round GRPO against MOTIF on the toy task, from the same warm start.

Every method trains the same number of round-1 samples per step (B x m) for the same steps. GRPO and MOTIF
get the same per-round token budget, which is too small for a whole solution; a third arm gives single-round
GRPO MOTIF's total budget (3 rounds' worth) in one round. Each is evaluated on held-out questions in its own
protocol and budget. Several seeds per method give a mean and a 95% interval at every evaluated step.

    python -m cluster.bench.learning --seeds 0 1 2 --steps 40 [--out runs/learning-benchmark] [key=value ...]

Prints a JSON document and a table, and writes both plus a plot to --out. Extra key=value arguments override
the demo config for both methods (e.g. data.toy.operations=8 rollout.max_tokens=40).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from cluster.evaluation import t_quantile

METHODS = {
    "grpo, 1 round": ["rollout.rounds=1"],
    "motif, 3 rounds": ["rollout.rounds=3"],
    # The same total token budget as MOTIF's three rounds, in one round: what rounds cost or buy.
    "grpo, 1 round x3 budget": ["rollout.rounds=1", "rollout.max_tokens=120", "eval.max_tokens=120"],
}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def run_one(config: str, out: Path, method: str, seed: int, steps: int, every: int, overrides: list[str]) -> dict:
    run_dir = out / f"{'-'.join(method.replace(',', '').split())}-seed{seed}"
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", config, f"output_dir={run_dir}",
           f"steps={steps}", f"eval.every={every}", f"rollout.seed={seed}", f"learner.seed={seed}",
           f"data.shuffle_seed={seed}", *METHODS[method], *overrides]
    metrics = run_dir / "metrics.jsonl"
    if finished(metrics, steps):  # an interrupted benchmark rerun with the same --out keeps finished runs
        print(f"[benchmark] {method}, seed {seed}: reusing {run_dir}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[benchmark] {method}, seed {seed}: {run_dir}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return {r["step"]: r["eval/pass@1"] for r in read_rows(metrics) if "eval/pass@1" in r}


def read_rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []


def finished(metrics: Path, steps: int) -> bool:
    return any(r["step"] == steps and "eval/pass@1" in r for r in read_rows(metrics))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for method, by_step in results["methods"].items():
        steps = sorted(int(s) for s in by_step)
        means = [by_step[str(s)]["mean"] for s in steps]
        half = [by_step[str(s)]["ci95"] for s in steps]
        ax.errorbar(steps, means, yerr=half, marker="o", capsize=3, label=method)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out pass@1")
    ax.set_title(f"toy task, {results['seeds']} seeds, mean and 95% interval")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cluster/configs/demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", default="runs/learning-benchmark")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    curves = {m: [run_one(args.config, out, m, s, args.steps, args.every, args.overrides) for s in args.seeds]
              for m in METHODS}
    results = {"config": args.config, "overrides": args.overrides, "seeds": len(args.seeds), "steps": args.steps,
               "methods": {}}
    for method, runs in curves.items():
        results["methods"][method] = {}
        for step in sorted(runs[0]):
            values = [run[step] for run in runs]
            mean, half = interval(values)
            results["methods"][method][str(step)] = {"mean": mean, "ci95": half, "values": values}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "learning.png")

    steps = sorted(int(s) for s in next(iter(results["methods"].values())))
    header = f"{'method':<26}" + "".join(f"{'step ' + str(s):>16}" for s in steps)
    lines = [header] + [
        f"{method:<26}" + "".join(f"{by[str(s)]['mean']:>9.3f} ±{by[str(s)]['ci95']:.3f}" for s in steps)
        for method, by in results["methods"].items()
    ]
    print(json.dumps(results))
    print("\n".join(lines))
    print(f"plot: {out / 'learning.png'}")
    return results


if __name__ == "__main__":
    main()
