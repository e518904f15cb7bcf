"""Per-step metrics: one console line, one JSON line in the run folder, and TensorBoard scalars of the same names."""

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
]


class MetricsLog:
    """`metrics.jsonl` from byte `truncate_at` on: a fresh run starts it empty, a resumed run drops the lines
    written after its checkpoint and goes on from there. TensorBoard events go to RUN_DIR/tensorboard; a resumed
    run purges the events from `first_step` on, so both logs hold each step once."""

    def __init__(self, run_dir: Path, echo: bool = True, truncate_at: int = 0, first_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("ab")
        self._file.truncate(min(truncate_at, self.path.stat().st_size))
        self.echo = echo  # print a console line per step
        self.tensorboard_dir = run_dir / "tensorboard"
        self._board = SummaryWriter(str(self.tensorboard_dir), purge_step=first_step if truncate_at else None)

    def offset(self) -> int:
        return self._file.tell()

    def log(self, step: int, metrics: dict) -> None:
        self._file.write((json.dumps({"step": step, **metrics}) + "\n").encode())
        self._file.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._board.add_scalar(key, value, step)
        self._board.flush()
        if not self.echo:
            return
        parts = [f"step {step}"]
        for key, label, fmt in CONSOLE_FIELDS:
            if key in metrics:
                parts.append(f"{label} {fmt.format(metrics[key])}")
        if len(parts) > 1:
            tqdm.write(" | ".join(parts))

    def close(self) -> None:
        self._file.close()
        self._board.close()
