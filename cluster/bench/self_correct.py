"""Self-correction benchmark on the toy task: both stages of self-rewarding correction against single-round
GRPO, over RL seeds, with the recipe's config (cluster/configs/self-correct-toy.yaml).

Stage 1 runs once (`motif build-traces` on the warm start's own samples, then `motif sft` on the traces).
Then, per seed, three arms of `steps` RL steps each, evaluated on held-out questions at step 0, every
`--every` steps and at the end:

- "self-correct, both stages": stage 2 (rollout.protocol=self_correct) from the stage-1 model;
- "self-correct, RL only": the same RL from the warm start (no stage 1);
- "grpo, 1 round": single-round GRPO from the warm start, with the same prompts per step;
- "grpo, 1 round, same tokens": the same, for as many steps as make its training tokens those of the
  both-stages run of its seed (self-correction generates more per episode: attempts and verdicts).

    python -m cluster.bench.self_correct --seeds 0 1 2 --steps 30

Reports per arm, as mean and 95% t-interval over seeds: held-out final accuracy (pass@1) at step 0 and at the
end, turn-1 accuracy, both deltas, verdict accuracies, attempts, and the tokens generated in training (every
model turn is trained under every_turn and single-round GRPO, so the learner's tokens are the generated ones).
Prints JSON and a table; writes results.json and curves.png to --out. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cluster.bench.learning import interval, read_rows, run_one

CONFIG = "self-correct-toy"
FIGURES = ("turn1_accuracy", "final_accuracy", "delta_incorrect_to_correct", "delta_correct_to_incorrect",
           "verdict_accuracy_on_correct", "verdict_accuracy_on_wrong", "attempts")
SINGLE = ["rollout.protocol=single", "rollout.rounds=1", "learner.credit=first_round"]


def stage_one(out: Path, limit: int, overrides: list[str]) -> Path:
    """The stage-1 model: traces from the warm start's samples, imitated; built once under `out`."""
    model = out / "sft" / "model"
    if (model / "config.json").exists():
        return model
    traces = out / "traces" / "traces.jsonl"
    for command in (["build-traces", "--config", CONFIG, f"data.limit={limit}", f"output_dir={out / 'traces'}",
                     f"traces.path={traces}", *overrides],
                    ["sft", "--config", "self-correct-sft", f"data.path={traces}", f"output_dir={out / 'sft'}"]):
        subprocess.run([sys.executable, "-m", "cluster.cli", *command], check=True)
    return model


def arms(stage_one_model: Path) -> dict[str, list[str]]:
    return {"self-correct, both stages": [f"model.path={stage_one_model}"],
            "self-correct, RL only": [],
            "grpo, 1 round": SINGLE}


def run_figures(run_dir: Path, steps: int) -> dict | None:
    """One finished run's held-out figures at step 0 and at the end, and its training tokens."""
    rows = read_rows(run_dir / "metrics.jsonl")
    evals = {r["step"]: r for r in rows if "eval/pass@1" in r}
    if not {0, steps} <= evals.keys():
        return None
    figures = {"tokens": sum(r.get("train_tokens", 0) for r in rows)}
    for when, step in (("start", 0), ("end", steps)):
        figures[f"pass@1/{when}"] = evals[step]["eval/pass@1"]
        for name in FIGURES:
            key = f"eval/self_correct/{name}"
            if key in evals[step]:
                figures[f"{name}/{when}"] = evals[step][key]
    return figures


def summarise(by_arm: dict[str, list[dict]]) -> dict:
    summary = {}
    for arm, runs in by_arm.items():
        keys = sorted({k for run in runs for k in run})
        summary[arm] = {"runs": len(runs)}
        for key in keys:
            values = [run[key] for run in runs if key in run]
            mean, half = interval(values)
            summary[arm][key] = {"mean": mean, "ci95": half, "values": values}
    return summary


def table(summary: dict) -> str:
    columns = ["steps", "pass@1/start", "pass@1/end", "turn1_accuracy/end", "final_accuracy/end",
               "delta_incorrect_to_correct/end", "delta_correct_to_incorrect/end", "tokens"]
    lines = [f"{'arm':<28}" + "".join(f"{c:>26}" for c in columns)]
    for arm, figures in summary.items():
        cells = [f"{figures[c]['mean']:.3f} ±{figures[c]['ci95']:.3f}" if c in figures and c not in ("tokens", "steps")
                 else f"{figures[c]['mean']:.0f}" if c in figures else "-" for c in columns]
        lines.append(f"{arm + ' n=' + str(figures['runs']):<28}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def plot(out: Path, run_dirs: dict[str, list[Path]]) -> Path:
    """Held-out pass@1 (and turn-1 accuracy for the self-correction arms) per evaluation, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for arm, dirs in run_dirs.items():
        for key, style in (("eval/pass@1", "-"), ("eval/self_correct/turn1_accuracy", ":")):
            curves = [{r["step"]: r[key] for r in read_rows(d / "metrics.jsonl") if key in r} for d in dirs]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                label = arm + (" (final)" if "self-correct" in arm and key == "eval/pass@1" else "")
                label = label if key == "eval/pass@1" else f"{arm} (turn 1)"
                ax.plot(steps, [sum(c[s] for c in curves) / len(curves) for s in steps], style, marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("self-correction on the toy task (mean over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def slug(arm: str) -> str:
    return arm.replace(",", "").replace(" ", "-")


def run_arm(out: Path, arm: str, seed: int, arguments: list[str], steps: int) -> dict | None:
    run_dir = out / slug(arm) / f"seed{seed}"
    record = run_one(run_dir, arguments, steps)
    figures = run_figures(run_dir, steps) if record["returncode"] == 0 else None
    print(f"seed {seed}, {arm}: " + (f"pass@1 {figures['pass@1/start']:.3f} -> {figures['pass@1/end']:.3f}"
                                      if figures else f"FAILED: {run_dir / 'benchmark.log'}"), flush=True)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--traces-limit", type=int, default=400, help="questions stage 1 samples from")
    parser.add_argument("--out", default="runs/self-correct-bench")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every run, stage 1 included")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    model = stage_one(out / "stage1", args.traces_limit, args.overrides)
    by_arm: dict[str, list[dict]] = {}
    run_dirs: dict[str, list[Path]] = {}
    for seed in args.seeds:
        common = [f"eval.every={args.every}", f"rollout.seed={seed}", f"learner.seed={seed}",
                  f"data.shuffle_seed={seed}", "checkpoint.every=0", *args.overrides]
        plan = [(arm, extra, args.steps) for arm, extra in arms(model).items()]
        done: dict[str, dict] = {}
        while plan:
            arm, extra, steps = plan.pop(0)
            figures = run_arm(out, arm, seed, ["--config", CONFIG, f"steps={steps}", *common, *extra], steps)
            if figures:
                done[arm] = figures
                by_arm.setdefault(arm, []).append(figures | {"steps": steps})
                run_dirs.setdefault(arm, []).append(out / slug(arm) / f"seed{seed}")
            if arm == "grpo, 1 round" and figures and "self-correct, both stages" in done:
                matched = round(args.steps * done["self-correct, both stages"]["tokens"] / figures["tokens"])
                plan.append(("grpo, 1 round, same tokens", SINGLE, matched))
    traces = json.loads((out / "stage1" / "traces" / "traces.summary.json").read_text())
    results = {"config": CONFIG, "steps": args.steps, "seeds": args.seeds, "overrides": args.overrides,
               "stage1": traces, "arms": summarise(by_arm)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    print(table(results["arms"]))
    print(f"curves: {plot(out, run_dirs)}")
    return results


if __name__ == "__main__":
    main()
