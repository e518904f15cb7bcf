"""Per-step metrics: one console line, one JSON line in the run folder, and the same scalars in each tracker of
`logging.trackers` (cluster/trackers.py; TensorBoard by default)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

CONSOLE_FIELDS = [
    ("reward", "reward", "{:.3f}"),
    ("reward/accuracy", "acc", "{:.3f}"),
    ("reward/format", "fmt", "{:.2f}"),
    ("reward/reward_model", "rm", "{:+.3f}"),
    ("loss", "loss", "{:+.4f}"),
    ("kl", "kl", "{:.2e}"),
    ("dpo/reward_margin", "margin", "{:+.4f}"),
    ("adapter_version", "v", "{:d}"),
    ("time_rollout", "rollout", "{:.1f}s"),
    ("time_reward", "reward", "{:.2f}s"),
    ("time_learn", "learn", "{:.1f}s"),
    ("time_sync", "sync", "{:.2f}s"),
    ("rollout/staleness_mean", "stale", "{:.1f}"),  # rollout.max_staleness >= 1
    ("time_wait_rollout", "waited", "{:.2f}s"),
]


class MetricsLog:
    """`metrics.jsonl` from byte `truncate_at` on: a fresh run starts it empty, a resumed run drops the lines
    written after its checkpoint and goes on from there. Each of `trackers` gets the numeric metrics; a resumed
    run passes the tracker runs' ids (`run_ids` of the run it continues) and TensorBoard purges its events from
    `first_step` on, so both logs hold each step once."""

    def __init__(self, run_dir: Path, echo: bool = True, truncate_at: int = 0, first_step: int = 0,
                 trackers=("tensorboard",), project: str = "motif-rl", params: dict | None = None,
                 run_ids: dict | None = None):
        from cluster.trackers import TRACKERS

        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("ab")
        self._file.truncate(min(truncate_at, self.path.stat().st_size))
        self.echo = echo  # print a console line per step
        self.trackers = {name: TRACKERS[name](run_dir, project, params or {}, (run_ids or {}).get(name),
                                              first_step if truncate_at else None) for name in trackers}

    def run_ids(self) -> dict[str, str]:
        """The tracker runs' ids by tracker, for the checkpoint; empty when no tracker names its run."""
        return {name: t.run_id for name, t in self.trackers.items() if t.run_id}

    def offset(self) -> int:
        return self._file.tell()

    def log(self, step: int, metrics: dict) -> None:
        self._file.write((json.dumps({"step": step, **metrics}) + "\n").encode())
        self._file.flush()
        scalars = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
        for tracker in self.trackers.values():
            tracker.log(step, scalars)
        if not self.echo:
            return
        parts = [f"step {step}"]
        for key, label, fmt in CONSOLE_FIELDS:
            if key in metrics:
                parts.append(f"{label} {fmt.format(metrics[key])}")
        if len(parts) > 1:
            tqdm.write(" | ".join(parts))

    def close(self, ok: bool = True) -> None:
        """ok: the run ended as planned (a tracker marks its run finished, else failed)."""
        self._file.close()
        for tracker in self.trackers.values():
            tracker.close(ok)
