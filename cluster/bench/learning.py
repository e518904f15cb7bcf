"""Learning benchmark: MOTIF against single-round GRPO on the toy task, over a grid of difficulties.

A cell is (difficulty, method). Each cell trains from several warm starts (the tiny model SFT'd with another
seed, on traces of every difficulty of the grid, so that all cells of a seed start from the same model) and
several RL seeds per warm start, and reports the held-out gain from step 0 to the last step: mean
and 95% t-interval over its runs. Every method trains the same round-1 samples per step (B x m) for the same
steps. GRPO and MOTIF get the same per-round token budget, which is too small for a whole solution; a third
arm gives single-round GRPO MOTIF's total budget (3 rounds' worth) in one round; a fourth trains MOTIF's
continuation rounds as well as round 1 (learner.credit=every_round). Each is evaluated on
held-out questions in its own protocol and budget, at step 0 and at the last step (--every adds more).
`--arms motivation` runs MeRF's ablation instead (or beside, `--arms protocols motivation`): MOTIF told of its
reward in each reward.motivation mode; with `--motivation-warm-start` its arms start from the warm start
fine-tuned under every mode's prompt (cluster/bench/merf.py), so that no prompt is new to the model.
`--arms staleness`: MOTIF at rollout.max_staleness 0, 1 and 2.

    python -m cluster.bench.learning --operations 4 6 8 10 --warm-starts 0 1 --seeds 0 1 2 --steps 30

Runs go to --out/ops<d>/ws<w>/<method>-seed<s>, each with its log and the arguments it ran with. A rerun with
the same --out reuses every run that finished with the same resolved config, so an interrupted grid continues
where it stopped; --report only summarises the finished runs. Prints a JSON document and a table, and writes
results.json and grid.png (a heat-map of the gains) to --out, and curves.png with --every. Extra key=value
arguments override the demo config for every run (e.g. rollout.max_tokens=40).
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
import time
from collections import Counter
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.bench.merf import prompt_varied_warm_start
from cluster.config import ConfigError, RunConfig, load_config, read_as_now, to_dict, without_new_unset
from cluster.evaluation import t_quantile
from rewards.motivation import MODES

METHODS = {
    "grpo, 1 round": ["rollout.rounds=1", "learner.credit=first_round"],
    "motif, 3 rounds": ["rollout.rounds=3", "learner.credit=first_round"],
    # The same total token budget as MOTIF's three rounds, in one round: what rounds cost or buy.
    "grpo, 1 round x3 budget": ["rollout.rounds=1", "rollout.max_tokens=120", "eval.max_tokens=120",
                                "learner.credit=first_round"],
    # MOTIF with the continuation rounds trained too.
    "motif, every round": ["rollout.rounds=3", "learner.credit=every_round"],
}
# MeRF's ablation (arXiv 2506.18485): MOTIF told nothing of its reward, the truth, the components with each
# other's weights, or the opposite of what is scored.
MOTIVATION_ARMS = {f"motif, motivation {mode}": [*METHODS["motif, 3 rounds"], f"reward.motivation={mode}"]
                   for mode in MODES}
# Overlapped training (docs/async.md): MOTIF with its next S steps' rollouts sampled while a step trains.
STALENESS_ARMS = {f"motif, staleness {s}": [*METHODS["motif, 3 rounds"], f"rollout.max_staleness={s}"]
                  for s in (0, 1, 2)}
ARMS = {"protocols": METHODS, "motivation": MOTIVATION_ARMS, "staleness": STALENESS_ARMS}
EVERY_METHOD = {method: overrides for arms in ARMS.values() for method, overrides in arms.items()}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def slug(method: str) -> str:
    return "-".join(method.replace(",", "").split())


def run_arguments(config: str, operations: int, warm_start: int, method: str, seed: int, steps: int, every: int,
                  overrides: list[str], warm_start_operations: list[int] | None = None) -> list[str]:
    """The `motif train` arguments of one run (without its output folder). Every method takes one optimizer
    step per step, so the mini-batch is all the samples a step trains (after the overrides)."""
    shared = [f"model.warm_start.operations=[{','.join(map(str, warm_start_operations))}]"] \
        if warm_start_operations else []
    arguments = ["--config", config, f"steps={steps}", f"eval.every={every}", f"data.toy.operations={operations}",
                 f"model.warm_start.seed={warm_start}", *shared, f"rollout.seed={seed}", f"learner.seed={seed}",
                 f"data.shuffle_seed={seed}", *EVERY_METHOD[method], *overrides]
    resolved = load_config(config, arguments[2:])
    r, learner = resolved.rollout, resolved.learner
    trained = r.prompts_per_step * r.samples_per_prompt  # round 1, plus every continuation round if trained
    if learner.credit == "every_round" and r.rounds > 1:
        trained *= 1 + r.continuations * (r.rounds - 1)
    return [*arguments, f"learner.mini_batch_size={trained}",
            f"learner.micro_batch_size={math.gcd(trained, learner.micro_batch_size)}"]


def read_rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []


def same_config(run_dir: Path, arguments: list[str]) -> bool | None:
    """Whether the run in run_dir trained with the config these arguments resolve to (its config.yaml, the
    output folder aside): a default that changed since makes the run stale, and arguments that spell out what
    it ran with match it. None where the run kept no readable config."""
    try:
        saved = read_as_now(yaml.safe_load((run_dir / "config.yaml").read_text()))
        # Through YAML as the run wrote it, so that types compare as they were saved.
        now = yaml.safe_load(yaml.safe_dump(to_dict(load_config(arguments[1], arguments[2:]))))
    except (OSError, yaml.YAMLError, ConfigError):
        return None
    if not isinstance(saved, dict):
        return None
    saved.pop("output_dir", None)
    now.pop("output_dir", None)
    return saved == without_new_unset(saved, now, yaml.safe_load(yaml.safe_dump(to_dict(RunConfig()))))


def recorded(run_dir: Path, arguments: list[str]) -> dict | None:
    """The record of a run whose config these arguments resolve to (or, where it kept no config, that ran with
    these arguments), finished or failed, else None."""
    record_path = run_dir / "benchmark.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    matches = same_config(run_dir, arguments)
    if matches is None:
        matches = record.get("arguments") == arguments
    return record | {"run_dir": str(run_dir)} if matches else None


def finished(run_dir: Path, arguments: list[str], steps: int) -> dict | None:
    """The record of a run that finished with the config these arguments resolve to, else None."""
    record = recorded(run_dir, arguments)
    if record is None or record["returncode"] != 0 or str(steps) not in record["pass@1"]:
        return None
    return record


def run_one(run_dir: Path, arguments: list[str], steps: int) -> dict:
    """Trains one run (or reuses it) and returns its record: the arguments, wall time and pass@1 per step.
    A run that fails is recorded with its exit status and the grid goes on."""
    record = finished(run_dir, arguments, steps)
    if record is not None:
        return record | {"reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    started = time.monotonic()
    with open(run_dir / "benchmark.log", "w") as log:
        status = subprocess.run([sys.executable, "-m", "cluster.cli", "train", *arguments,
                                 f"output_dir={run_dir}"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    rows = read_rows(run_dir / "metrics.jsonl")
    record = {"arguments": arguments, "wall_s": round(time.monotonic() - started, 1), "returncode": status,
              "pass@1": {str(r["step"]): r["eval/pass@1"] for r in rows if "eval/pass@1" in r}}
    # Only a finished run is reused; a failed one is reported, and retried by the next invocation.
    (run_dir / "benchmark.json").write_text(json.dumps(record, indent=1) + "\n")
    return record | {"reused": False, "run_dir": str(run_dir)}


def first_failures(records: list[dict], steps: int) -> dict | None:
    """The round of each wrong held-out answer's first wrong step (cluster.bench.diagnosis), summed over the
    runs, at step 0 and at the last step; None where a run kept no evaluation samples."""
    from cluster.bench.diagnosis import diagnose_folder

    totals = {"start": Counter(), "end": Counter()}
    for record in records:
        folders = {"start": Path(record["run_dir"]) / "eval" / "step-0",
                   "end": Path(record["run_dir"]) / "eval" / f"step-{steps}"}
        if not all((folder / "samples.jsonl").is_file() for folder in folders.values()):
            return None
        for end, folder in folders.items():
            try:
                totals[end].update(diagnose_folder(folder)["first_failure_round"])
            except (OSError, ValueError) as e:  # a summary without attribution beats none after hours of runs
                print(f"[benchmark] no attribution for {folder}: {e}", file=sys.stderr)
                return None
    return {end: dict(sorted(counts.items())) for end, counts in totals.items()}


def summarise(runs: dict, steps: int) -> dict:
    """Per method and difficulty: the gain of every finished run (last step minus step 0), its mean and
    interval, the mean pass@1 at both ends, and how many runs finished and failed."""
    cells: dict = {}
    for (method, operations), records in runs.items():
        done = [r for r in records if r["returncode"] == 0 and {"0", str(steps)} <= r["pass@1"].keys()]
        cell = {"runs": len(done), "failed": sum(r["returncode"] != 0 for r in records)}
        if done:
            gains = [r["pass@1"][str(steps)] - r["pass@1"]["0"] for r in done]
            mean, half = interval(gains)
            cell |= {"gain": mean, "ci95": half, "lo": mean - half, "hi": mean + half, "gains": gains,
                     "start": statistics.fmean(r["pass@1"]["0"] for r in done),
                     "end": statistics.fmean(r["pass@1"][str(steps)] for r in done),
                     # Mean pass@1 at every evaluation all the runs made (--every adds them).
                     "curve": {step: statistics.fmean(r["pass@1"][step] for r in done) for step in
                               sorted(set.intersection(*(set(r["pass@1"]) for r in done)), key=int)},
                     "first_failure_round": first_failures(done, steps)}
        cells.setdefault(method, {})[str(operations)] = cell
    return cells


def table(results: dict) -> str:
    difficulties = results["operations"]
    lines = [f"{'gain from step 0':<26}" + "".join(f"{f'{d} operations':>22}" for d in difficulties)]
    for method, by in results["cells"].items():
        cells = []
        for d in difficulties:
            cell = by[str(d)]
            text = (f"{cell['gain']:+.3f} ±{cell['ci95']:.3f} n={cell['runs']}" if "gain" in cell
                    else f"no run n={cell['runs']}")
            cells.append(f"{text:>22}")
        lines.append(f"{method:<26}" + "".join(cells))
    lines.append("\nfirst wrong step by round (all runs' held-out samples), step 0 -> last step")
    for method, by in results["cells"].items():
        for d in difficulties:
            found = by[str(d)].get("first_failure_round")
            if found:
                rounds = sorted(set(found["start"]) | set(found["end"]))
                lines.append(f"{method:<26}{d:>3} ops  " + "  ".join(
                    f"{r}: {found['start'].get(r, 0)} -> {found['end'].get(r, 0)}" for r in rounds))
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The gains as a Markdown table (mean ± 95% interval, step 0 -> last step, runs), for a README."""
    difficulties = results["operations"]
    lines = ["| method | " + " | ".join(f"{d} operations" for d in difficulties) + " |",
             "|---|" + "---|" * len(difficulties)]
    for method, by in results["cells"].items():
        cells = [by[str(d)] for d in difficulties]
        lines.append(f"| {method} | " + " | ".join(
            f"{c['gain']:+.3f} ± {c['ci95']:.3f} ({c['start']:.3f} → {c['end']:.3f}, n={c['runs']})" if "gain" in c
            else "no run" for c in cells) + " |")
    return "\n".join(lines)


def curves(results: dict, path: Path) -> bool:
    """Held-out pass@1 at each evaluation, mean over a cell's runs, one line per method and difficulty; False
    (and nothing written) where no cell was evaluated between its ends."""
    lines = {(m, d): cell["curve"] for m, by in results["cells"].items() for d, cell in by.items() if "curve" in cell}
    if not any(len(curve) > 2 for curve in lines.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for (method, operations), curve in lines.items():
        label = method if len(results["operations"]) == 1 else f"{method}, {operations} ops"
        ax.plot([int(step) for step in curve], list(curve.values()), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("held-out pass@1, mean over runs", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def heatmap(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, difficulties = list(results["cells"]), results["operations"]
    cells = [[results["cells"][m][str(d)] for d in difficulties] for m in methods]
    gains = [[c.get("gain", math.nan) for c in row] for row in cells]
    limit = max([abs(g) for row in gains for g in row if not math.isnan(g)] + [0.05])
    fig, ax = plt.subplots(figsize=(1.9 * len(difficulties) + 2.5, 1.1 * len(methods) + 1.5),
                           constrained_layout=True)
    image = ax.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if "gain" not in cell:
                ax.text(j, i, "no run", ha="center", va="center", fontsize=8)
                continue
            # Bold where the interval excludes 0: a gain (or loss) the runs agree on.
            sure = cell["runs"] > 1 and (cell["lo"] > 0 or cell["hi"] < 0)
            ax.text(j, i, f"{cell['gain']:+.3f}\n±{cell['ci95']:.3f}\n{cell['start']:.2f}→{cell['end']:.2f}, "
                    f"n={cell['runs']}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if sure else "normal")
    ax.set_xticks(range(len(difficulties)), [f"{d} ops" for d in difficulties])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_title(f"held-out pass@1 gain, step 0 → {results['steps']}\nmean ± 95% interval over runs "
                 "(bold: excludes 0)", fontsize=10)
    fig.colorbar(image, ax=ax, label="gain")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--operations", type=int, nargs="+", default=[4, 6, 8, 10], help="toy difficulties")
    parser.add_argument("--warm-starts", type=int, nargs="+", default=[0, 1], help="warm-start (SFT) seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds per warm start")
    parser.add_argument("--warm-start-operations", type=int, nargs="+",
                        help="difficulties of the warm starts' traces (default: --operations)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=0, help="evaluate every this many steps too (0: ends only)")
    parser.add_argument("--out", default="runs/learning-grid")
    parser.add_argument("--report", action="store_true", help="summarise the finished runs; start none")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["protocols"],
                        help="protocols: GRPO against MOTIF; motivation: MOTIF under each reward.motivation mode; "
                             "staleness: MOTIF at rollout.max_staleness 0, 1, 2")
    parser.add_argument("--motivation-warm-start", action="store_true",
                        help="start the motivation arms from the warm start fine-tuned under every mode's prompt")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    methods = [method for arms in args.arms for method in ARMS[arms]]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for method in methods:
            run_arguments(args.config, args.operations[0], args.warm_starts[0], method, args.seeds[0],
                          args.steps, args.every or args.steps, args.overrides)
    except ConfigError as e:  # before hours of runs, not in the first one's log
        parser.error(str(e))

    # RL seeds outermost, then warm starts: a grid stopped early covers every cell with its first seeds from
    # every warm start.
    plan = [(w, s, d, m) for s in args.seeds for w in args.warm_starts for d in args.operations for m in methods]
    runs: dict = {(m, d): [] for m in methods for d in args.operations}
    started = time.monotonic()
    with tqdm(plan, desc="learning grid", unit="run", disable=args.report) as progress:
        for w, s, d, m in progress:
            run_dir = out / f"ops{d}" / f"ws{w}" / f"{slug(m)}-seed{s}"
            arguments = run_arguments(args.config, d, w, m, s, args.steps, args.every or args.steps,
                                      args.overrides, args.warm_start_operations or args.operations)
            if args.motivation_warm_start and m in MOTIVATION_ARMS:
                model = prompt_varied_warm_start(out, arguments[1], arguments[2:], build=not args.report)
                arguments.append(f"model.path={model}")
            record = recorded(run_dir, arguments) if args.report else run_one(run_dir, arguments, args.steps)
            if record is None:
                continue
            runs[(m, d)].append(record)
            if not args.report:
                ends = record["pass@1"]
                verdict = (f"{ends.get('0', math.nan):.3f} -> {ends.get(str(args.steps), math.nan):.3f}"
                           if record["returncode"] == 0 else f"FAILED (exit {record['returncode']}): "
                           f"{run_dir / 'benchmark.log'}")
                took = "reused" if record["reused"] else f"{record['wall_s']:.0f} s"
                progress.write(f"{d} ops, warm start {w}, seed {s}, {m}: {verdict} ({took})")
    results = {"config": args.config, "overrides": args.overrides, "steps": args.steps,
               "arms": args.arms, "motivation_warm_start": args.motivation_warm_start,
               "operations": args.operations, "warm_starts": args.warm_starts, "seeds": args.seeds,
               "warm_start_operations": args.warm_start_operations or args.operations,
               "wall_s_this_invocation": round(time.monotonic() - started, 1),
               "wall_s_all_runs": round(sum(r["wall_s"] for rs in runs.values() for r in rs), 1),
               "cells": summarise(runs, args.steps)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    heatmap(results, out / "grid.png")
    if curves(results, out / "curves.png"):
        print(f"curves: {out / 'curves.png'}")
    print(json.dumps(results))
    print(table(results))
    print(markdown(results))
    print(f"heat-map: {out / 'grid.png'}")
    return results


if __name__ == "__main__":
    main()
