"""`motif serve` against `motif eval` on the same held-out questions: requests/s and latency by concurrency.

    python -m cluster.bench.serve [--config demo] [--questions 64] [--clients 1 4 16] [override ...]

Trains nothing. `motif serve` (a subprocess on loopback) serves the config's model (the demo's: the toy warm
start; `eval.adapter=...` serves an adapter) and gets the first N held-out questions through the `openai`
client, each client sending its share of them one request after another, at each number of concurrent clients.
Then `motif eval`'s path (its rollout pool, one worker, and evaluate()) samples the same questions with the same
protocol and sampling (`eval.n=1`: one sample each). Start-up is timed apart; each side is warmed up first.
Prints a JSON line and a short table and writes cluster/bench/results/serve.json (--out); compare figures from
one run (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
REPO = Path(__file__).resolve().parents[2]
WARM_UP = 4  # requests before the timed passes: the engine's first calls allocate


def start_server(config: str | None, overrides: list[str], log: Path) -> tuple[subprocess.Popen, str, float]:
    """`motif serve` on a free loopback port: (process, base URL, seconds until /health answered)."""
    from learner.rendezvous import free_port

    port = free_port()
    command = [sys.executable, "-m", "cluster.cli", "serve", *(["--config", config] if config else []), *overrides,
               "--port", str(port)]
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    while time.monotonic() - start < 600:
        if proc.poll() is not None:
            raise RuntimeError(f"motif serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1", time.monotonic() - start
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"motif serve did not answer /health within 600 s:\n{log.read_text()[-3000:]}")


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def serve_pass(client, model: str, questions: list[str], clients: int) -> tuple[dict, list[str]]:
    """Every question once, `clients` requests at a time: the figures and the answers in question order."""
    def ask(question: str) -> tuple[float, str, int]:
        start = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}])
        return time.perf_counter() - start, reply.choices[0].message.content, reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        timed = list(pool.map(ask, questions))
    wall = time.perf_counter() - start
    latencies = [t for t, _, _ in timed]
    return {"requests_per_s": len(questions) / wall, "wall_s": wall, "p50_s": percentile(latencies, 50),
            "p90_s": percentile(latencies, 90), "mean_tokens": statistics.fmean(n for _, _, n in timed)}, \
        [answer for _, answer, _ in timed]


def pass_at_1(answers: list[str], golds: list[str]) -> float:
    from rewards import grade_batch

    return sum(r.correct for r in grade_batch(answers, golds)) / len(answers)


def measure_serve(config: str | None, overrides: list[str], questions: list[str], golds: list[str],
                  clients: list[int], log: Path) -> dict:
    import openai

    proc, url, startup = start_server(config, overrides, log)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        [model] = [m.id for m in client.models.list().data]
        serve_pass(client, model, questions[:WARM_UP], WARM_UP)
        by_clients = {}
        for c in clients:
            figures, answers = serve_pass(client, model, questions, c)
            by_clients[str(c)] = {**figures, "pass@1": pass_at_1(answers, golds)}
    finally:
        proc.terminate()
        proc.wait(60)
    return {"startup_s": startup, "clients": by_clients}


def measure_eval(config, problems: list, log_dir: Path) -> dict:
    from cluster.evaluation import QUESTIONS_PER_CALL, eval_pool, evaluate, held_out_spec
    from cluster.models import resolve_model

    model_path = resolve_model(config.model, config.data.toy)
    spec, rewards = held_out_spec(config, model_path)
    start = time.monotonic()
    try:
        with eval_pool(config, model_path, log_dir) as pool:
            startup = time.monotonic() - start
            evaluate(pool, problems[:QUESTIONS_PER_CALL], spec, key=("bench-warm-up",), protocol=config.rollout.protocol)
            start = time.perf_counter()
            summary, samples = evaluate(pool, problems, spec, protocol=config.rollout.protocol)
            wall = time.perf_counter() - start
    finally:
        for reward in rewards:
            reward.close()
    return {"startup_s": startup, "samples_per_s": len(samples) / wall, "wall_s": wall, "pass@1": summary["pass@1"],
            "mean_tokens": summary["mean_tokens"], "rounds": spec.rounds, "max_tokens": spec.first_round.max_tokens,
            "questions_per_call": QUESTIONS_PER_CALL, "workers": config.rollout.num_workers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="a shipped config's name or a YAML file (default demo)")
    parser.add_argument("--questions", type=int, default=64, help="held-out questions (eval.limit)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for motif serve and motif eval")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from cluster.config import load_config
    from cluster.evaluation import eval_problems
    from cluster.workers import close_local_ray

    close_local_ray()
    overrides = [*args.overrides, f"eval.limit={args.questions}", "eval.n=1"]
    config = load_config(args.config, overrides, purpose="eval")
    problems = eval_problems(config)
    questions, golds = [p.question for p in problems], [p.gold for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        serve = measure_serve(args.config, overrides, questions, golds, args.clients, Path(tmp) / "serve.log")
        evaluation = measure_eval(config, problems, Path(tmp) / "eval-logs")
    rate = evaluation["samples_per_s"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python -m cluster.bench.serve", *(argv or sys.argv[1:])]),
        "config": args.config, "overrides": args.overrides, "questions": len(questions), "cores": os.cpu_count(),
        "adapter": config.eval.adapter, "serve": serve, "eval": evaluation,
        "serve_vs_eval": {c: f["requests_per_s"] / rate for c, f in serve["clients"].items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(f"{'':<32}{'per s':>8}{'vs eval':>9}{'p50 s':>8}{'p90 s':>8}{'pass@1':>8}")
    for c, f in serve["clients"].items():
        print(f"{f'motif serve, {c} client' + ('s' if c != '1' else ''):<32}{f['requests_per_s']:>8.1f}"
              f"{f['requests_per_s'] / rate:>9.2f}{f['p50_s']:>8.2f}{f['p90_s']:>8.2f}{f['pass@1']:>8.3f}")
    print(f"{'motif eval (samples)':<32}{rate:>8.1f}{1:>9.2f}{'':>16}{evaluation['pass@1']:>8.3f}")
    print(f"start-up: motif serve {serve['startup_s']:.1f} s to /health; motif eval {evaluation['startup_s']:.1f} s "
          f"(Ray and the rollout worker)\nresults: {args.out}")


if __name__ == "__main__":
    main()
