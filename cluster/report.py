"""`motif report RUN_DIR`: the run's curves (reward, held-out accuracy, KL, phase times) in one PNG."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = [
    ("training reward", ["reward", "reward/accuracy", "reward/format"]),
    ("held-out accuracy", ["eval/pass@1", "eval/maj@n"]),
    ("KL to the base model", ["kl"]),
    ("seconds per phase", ["time_rollout", "time_reward", "time_learn", "time_sync", "time_eval"]),
]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the folder of a `motif train` run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves against step and return the PNG's path (default RUN_DIR/report.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    votes = [int(k.split("@")[1]) for r in rows for k in r if k.startswith("eval/maj@")]
    largest_vote = f"eval/maj@{max(votes)}" if votes else "eval/maj@n"
    out = Path(out) if out else Path(run_dir) / "report.png"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            key = largest_vote if key == "eval/maj@n" else key
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(f"run {Path(run_dir).resolve().name}")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
