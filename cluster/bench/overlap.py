"""Step time of the synchronous schedule against the overlapped one (rollout.max_staleness S).

    python -m cluster.bench.overlap [--staleness 0 1 2] [--steps 12] [--repeats 2] [-- key=value ...]

Each arm is a `motif train` of the demo (the toy warm start, MOTIF with 3 rounds; held-out evaluation and
checkpoints off) run in turn, A B C A B C, so that the machine's drift falls on every arm alike. Per arm, medians
over steps 3.. of each run:
- step: the wall time of a step, as the schedule runs it (time_step);
- rollout and learn: the two phases' own times (time_rollout; time_reward + time_learn + time_sync);
- hidden: the share of the shorter phase the overlap hid, (rollout + learn - step) / min(rollout, learn); the
  ideal step is max(rollout, learn), hidden 1.
Locally every arm splits the cores as its schedule needs them: S=0 gives the rollout worker and the learner every
core, each in turn; S >= 1 gives each its share (cluster/workers.py thread_count). Prints JSON and a table; writes
cluster/bench/results/overlap.json. Compare figures from one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results" / "overlap.json"


def run(staleness: int, steps: int, out: Path, overrides: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", "demo", f"output_dir={out}", f"steps={steps}",
           "eval.every=0", "checkpoint.every=0", f"rollout.max_staleness={staleness}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"S={staleness}: motif train failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def figures(metrics: list[dict]) -> dict:
    steps = [m for m in metrics if m["step"] >= 3]
    learn = [m["time_reward"] + m["time_learn"] + m["time_sync"] for m in steps]
    step, rollout = [m["time_step"] for m in steps], [m["time_rollout"] for m in steps]
    return {"step_s": statistics.median(step), "rollout_s": statistics.median(rollout),
            "learn_s": statistics.median(learn),
            "hidden": statistics.median((r + lr - s) / min(r, lr) for s, r, lr in zip(step, rollout, learn)),
            "staleness_mean": statistics.mean(m.get("rollout/staleness_mean", 0.0) for m in steps)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="key=value settings for every arm (after --)")
    args = parser.parse_args(argv)
    runs: dict[int, list[dict]] = {s: [] for s in args.staleness}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for s in args.staleness:
                runs[s].append(figures(run(s, args.steps, Path(tmp) / f"s{s}-{repeat}", args.overrides)))
    arms = {s: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for s, rs in runs.items()}
    base = arms[args.staleness[0]]["step_s"]
    for arm in arms.values():
        arm["speedup"] = base / arm["step_s"]
    result = {"steps": args.steps, "repeats": args.repeats, "overrides": args.overrides, "cores": os.cpu_count(),
              "arms": {f"S={s}": arm for s, arm in arms.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    print(f"{'arm':<6}{'step s':>8}{'rollout s':>11}{'learn s':>9}{'hidden':>8}{'stale':>7}{'speed-up':>10}")
    for name, arm in result["arms"].items():
        print(f"{name:<6}{arm['step_s']:>8.2f}{arm['rollout_s']:>11.2f}{arm['learn_s']:>9.2f}{arm['hidden']:>8.2f}"
              f"{arm['staleness_mean']:>7.2f}{arm['speedup']:>9.2f}x")
    return result


if __name__ == "__main__":
    main()
