"""Adaptive-rounds benchmark on the toy task: markovian rounds (stop when a round answers) against fixed R=3
MOTIF, from one warm start, over RL seeds, with cluster/configs/markovian-toy.yaml (3 to 9 steps per question).

Per seed and arm: `steps` RL steps, held-out pass@1 and generated tokens per sample at step 0 and at the end;
then the trained adapter on harder held-out questions (more steps than any training question: 10 to 12) with
the trained bound on rounds and with twice as many (markovian: eval.max_rounds; MOTIF: eval.rounds).

    python -m cluster.bench.markovian --seeds 0 1 2 --steps 30

Prints JSON and a table (mean and 95% t-interval over seeds); writes results.json and tokens.png to --out.
Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.bench.learning import read_rows, run_one
from cluster.bench.self_correct import summarise

CONFIG = "markovian-toy"
ARMS = {"markovian, at most 3 rounds": ([], "eval.max_rounds"),
        "motif, 3 rounds": (["rollout.protocol=motif", "rollout.rounds=3"], "eval.rounds")}
HARDER_OPERATIONS = (10, 12)  # more steps than any training question (3 to 9)
HARDER_QUESTIONS = 128


def harder_questions(out: Path) -> Path:
    """Held-out toy questions of 10 to 12 steps as a JSONL file: given to eval.path, they leave data.toy (and so
    the warm start the runs were trained from) as it is."""
    import dataclasses

    from cluster.config import load_config
    from cluster.tasks.toy_task import toy_problems

    path = out / "harder.jsonl"
    if not path.is_file():
        toy = dataclasses.replace(load_config(CONFIG).data.toy, operations=HARDER_OPERATIONS[0],
                                  max_operations=HARDER_OPERATIONS[1])
        out.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                                for p in toy_problems(toy, "test", HARDER_QUESTIONS)))
    return path


def harder_eval(run_dir: Path, arguments: list[str], bound_key: str, rounds: int, questions: Path) -> dict:
    """The run's adapter on the harder questions with at most `rounds` rounds; its summary."""
    folder = run_dir / f"harder-{rounds}-rounds"
    summary = folder / "summary.json"
    if not summary.is_file():
        subprocess.run([sys.executable, "-m", "cluster.cli", "eval", *arguments, f"eval.path={questions}",
                        f"eval.limit={HARDER_QUESTIONS}", "data.gold_format=plain", f"{bound_key}={rounds}",
                        f"eval.adapter={run_dir / 'adapter'}", f"eval.output_dir={folder}",
                        f"output_dir={run_dir}"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def run_figures(run_dir: Path, steps: int) -> dict | None:
    rows = read_rows(run_dir / "metrics.jsonl")
    evals = {r["step"]: r for r in rows if "eval/pass@1" in r}
    if not {0, steps} <= evals.keys():
        return None
    figures = {"train_tokens": sum(r.get("train_tokens", 0) for r in rows)}
    for when, step in (("start", 0), ("end", steps)):
        figures[f"pass@1/{when}"] = evals[step]["eval/pass@1"]
        figures[f"tokens_per_sample/{when}"] = evals[step]["eval/mean_tokens"]
        if "eval/markovian/rounds" in evals[step]:
            figures[f"rounds/{when}"] = evals[step]["eval/markovian/rounds"]
    return figures


def table(summary: dict) -> str:
    columns = ["pass@1/start", "pass@1/end", "tokens_per_sample/end", "rounds/end", "harder pass@1, trained rounds",
               "harder pass@1, 2x rounds"]
    lines = [f"{'arm':<30}" + "".join(f"{c:>30}" for c in columns)]
    for arm, figures in summary.items():
        cells = [f"{figures[c]['mean']:.3f} ±{figures[c]['ci95']:.3f}" if c in figures else "-" for c in columns]
        lines.append(f"{arm + ' n=' + str(figures['runs']):<30}" + "".join(f"{c:>30}" for c in cells))
    return "\n".join(lines)


def plot(out: Path, summary: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for arm, figures in summary.items():
        xs = [figures[f"tokens_per_sample/{w}"]["mean"] for w in ("start", "end")]
        ys = [figures[f"pass@1/{w}"]["mean"] for w in ("start", "end")]
        ax.errorbar(xs, ys, yerr=[figures[f"pass@1/{w}"]["ci95"] for w in ("start", "end")], marker="o", label=arm)
        ax.annotate("step 0", (xs[0], ys[0]), fontsize=7)
    ax.set_xlabel("generated tokens per held-out sample")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("adaptive rounds against fixed R=3 (mean ± 95% over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    path = out / "tokens.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", default="runs/markovian-bench")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    by_arm: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for arm, (extra, bound_key) in ARMS.items():
            run_dir = out / arm.replace(",", "").replace(" ", "-") / f"seed{seed}"
            arguments = ["--config", CONFIG, f"steps={args.steps}", f"eval.every={args.every}",
                         f"rollout.seed={seed}", f"learner.seed={seed}", f"data.shuffle_seed={seed}",
                         "checkpoint.every=0", *extra, *args.overrides]
            record = run_one(run_dir, arguments, args.steps)
            figures = run_figures(run_dir, args.steps) if record["returncode"] == 0 else None
            if figures is None:
                print(f"seed {seed}, {arm}: FAILED: {run_dir / 'benchmark.log'}", flush=True)
                continue
            for label, rounds in (("trained rounds", 3), ("2x rounds", 6)):
                figures[f"harder pass@1, {label}"] = harder_eval(run_dir, arguments, bound_key, rounds,
                                                                 harder_questions(out))["pass@1"]
            print(f"seed {seed}, {arm}: pass@1 {figures['pass@1/start']:.3f} -> {figures['pass@1/end']:.3f}, "
                  f"{figures['tokens_per_sample/end']:.0f} tokens/sample", flush=True)
            by_arm.setdefault(arm, []).append(figures)
    results = {"config": CONFIG, "steps": args.steps, "seeds": args.seeds, "overrides": args.overrides,
               "harder_operations": HARDER_OPERATIONS, "arms": summarise(by_arm)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    print(table(results["arms"]))
    print(f"plot: {plot(out, results['arms'])}")
    return results


if __name__ == "__main__":
    main()
