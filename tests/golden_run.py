"""A `motif train` run that also records what reached the learner, for the behaviour-unchanged test.

    python -m tests.golden_run OUT.json [--overlapped] [train arguments...]

OUT.json holds the run's per-step metrics (timings left out: they are the only part that is not a function of
the config) and, per step, every trained sample: prompt and completion token ids, advantage and temperature,
in the order the learner received them. --overlapped runs the steps through the overlapped schedule
(cluster/loop/overlap.py) whatever rollout.max_staleness is: at 0 it must train what the synchronous one does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING_PREFIXES = ("time_",)


def dumps(recording: dict) -> str:
    """JSON with one trained sample per line, readable in a diff."""
    steps = ",\n".join("  [\n" + ",\n".join("   " + json.dumps(s, sort_keys=True) for s in step) + "\n  ]"
                       for step in recording["trained"])
    return '{"metrics": ' + json.dumps(recording["metrics"], indent=1, sort_keys=True) + ',\n "trained": [\n' \
        + steps + '\n ]}\n'


def record(out: Path, argv: list[str]) -> int:
    from cluster.workers import close_local_ray

    close_local_ray()  # before Ray is imported, as the CLI does
    from cluster import cli
    from learner.group import LearnerGroup

    original = LearnerGroup.train_step
    trained: list[list[dict]] = []

    def recording(self, samples, *args, **kwargs):
        trained.append([{"prompt_ids": list(s.prompt_ids), "completion_ids": list(s.completion_ids),
                         "advantage": s.advantage, "temperature": s.temperature} for s in samples])
        return original(self, samples, *args, **kwargs)

    LearnerGroup.train_step = recording
    if "--overlapped" in argv:
        from cluster.loop import train
        from cluster.loop.overlap import Overlapped

        argv = [a for a in argv if a != "--overlapped"]
        train.schedule_for = lambda config: Overlapped
    code = cli.main(["train", *argv])
    run_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")))
    metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING_PREFIXES)}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out.write_text(dumps({"metrics": metrics, "trained": trained}))
    return code


if __name__ == "__main__":
    sys.exit(record(Path(sys.argv[1]), sys.argv[2:]))
