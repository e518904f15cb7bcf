"""Grading throughput: responses per second through the bounded pool vs. unbounded in-process grading.

    python -m cluster.bench.grading [--rows 300]

Prints a JSON line and a short table. Ratios matter, not absolute numbers (shared, noisy machines).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from cluster.tasks.data import SHIPPED
from rewards.grading import Grader
from rewards.math_answers import grade_unbounded


def workload(rows: int) -> tuple[list[str], list[str]]:
    responses, golds = [], []
    with open(SHIPPED / "math500" / "test.jsonl") as f:
        for _, line in zip(range(rows), f):
            gold = json.loads(line)["answer"]
            responses += [f"<answer>\\boxed{{{gold}}}</answer>", "The answer is 17.", f"\\boxed{{{gold}+1}}"]
            golds += [gold] * 3
    return responses, golds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args(argv)
    responses, golds = workload(args.rows)
    start = time.perf_counter()
    serial = [grade_unbounded(r, g) for r, g in zip(responses, golds)]
    serial_s = time.perf_counter() - start
    grader = Grader()
    grader.grade_batch(responses[:4], golds[:4])  # start the workers outside the timing
    start = time.perf_counter()
    pooled = grader.grade_batch(responses, golds)
    pool_s = time.perf_counter() - start
    grader.close()
    result = {
        "responses": len(responses),
        "serial_per_s": len(responses) / serial_s,
        "pool_per_s": len(responses) / pool_s,
        "pool_vs_serial": serial_s / pool_s,
        "agree": sum(a == b.correct for a, b in zip(serial, pooled)) / len(responses),
        "reasons": dict(Counter(r.reason for r in pooled)),
    }
    print(json.dumps(result))
    print(f"{'mode':<10}{'responses/s':>14}\n{'serial':<10}{result['serial_per_s']:>14.0f}\n"
          f"{'pool':<10}{result['pool_per_s']:>14.0f}\npool/serial speed ratio: {result['pool_vs_serial']:.2f}")


if __name__ == "__main__":
    main()
