"""Against a peer: single-round GRPO on the demo's task through this project and through TRL's GRPOTrainer.

    python -m cluster.bench.peer [--pairs 2 --steps 12 --eval-limit 64 --eval-n 4]

Both train the demo's warm start (the tiny model SFT'd on the toy task) on the same questions in the same order,
with this project's prompts (system prompt and chat template) and rewards (format 0.2 + accuracy 1.0), B x m =
4 x 8 samples of up to 120 tokens per step, one optimizer step per step, LoRA r 8 / alpha 16 on the same
modules and learning rate 2e-3, constant. Everything else is each trainer's default (TRL: transformers
`generate` in one process). Runs alternate, this project then TRL, each in a fresh process, `--pairs` times:
median time per step over steps 3..steps, start-up (process start to the first step), and held-out pass@1 of
each adapter through this project's evaluation path (the same questions, samples and grader) after equal steps
and after equal wall time (TRL trains on until it has run as long as this project's run of the same pair did).
This project at rollout.max_staleness=1 (the next step's rollout sampled while a step trains) and its MOTIF
protocol, which TRL cannot run, are reported beside (one run each).

Needs TRL: `pip install .[bench]`. Prints a JSON document and a table; writes cluster/bench/results/peer.json.
Time figures mean something only on an otherwise idle machine.
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
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "peer.json"
# The shape: single-round GRPO, 4 prompts x 8 samples of 120 tokens, one optimizer step per step.
SINGLE = ["rollout.protocol=single", "rollout.rounds=1", "rollout.max_tokens=120", "learner.credit=first_round",
          "learner.mini_batch_size=32", "learner.micro_batch_size=16"]
MOTIF = []  # the demo as shipped: 3 rounds of 40 tokens, every round trained
# The same shape with the next step's rollout sampled while a step trains (docs/async.md).
OVERLAPPED = [*SINGLE, "rollout.max_staleness=1"]
ARMS = {"motif-rl": SINGLE, "motif-rl, S=1": OVERLAPPED, "motif-rl, motif protocol": MOTIF}
TIMED_FROM = 3  # steps before it warm caches and allocators up


def require_trl() -> None:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise SystemExit("cluster.bench.peer compares against TRL, which is not installed: pip install .[bench]")


def run_config(overrides: list[str], steps: int, out: Path, eval_limit: int, eval_n: int):
    from cluster.config import load_config

    # No evaluation or checkpoint inside the timed run: every adapter is evaluated afterwards, the same way.
    return load_config("demo", [*overrides, f"steps={steps}", "eval.every=0", "checkpoint.every=0",
                                f"eval.limit={eval_limit}", f"eval.n={eval_n}", f"output_dir={out}"])


def prompts_in_order(config, steps: int) -> list[dict]:
    """The conversations this project sends at each step (its protocol's own rollout, captured), in step order,
    each with its question and gold answer: TRL's dataset, read in order."""
    from cluster.loop.step import prompt_batch
    from cluster.spec import rollout_spec, run_protocol
    from cluster.tasks.data import load_problems
    from rollout.records import Completion

    problems, _ = load_problems(config.data)
    spec = rollout_spec(config, [])  # no rewards: no motivation text; single's spec reads no tokenizer
    rows = []
    for step in range(1, steps + 1):
        batch = prompt_batch(problems, config.rollout.prompts_per_step, config.data.shuffle_seed, step - 1)
        sent = []

        def capture(conversations, sampling, use_adapter):
            sent.extend(conversations)
            return [[Completion([], [], "", [], "stop", 0)] * sampling.n for _ in conversations]

        run_protocol(config).rollout(capture, [p.question for p in batch], spec)
        rows += [{"prompt": c, "question": p.question, "gold": p.gold} for c, p in zip(sent, batch, strict=True)]
    return rows


# --- one arm, in its own process ---------------------------------------------------------------------------


def project_arm(args) -> dict:
    """`motif train`'s in-process path, each step's start and end taken around its schedule's step."""
    import cluster.loop.train as loop

    spans = []
    chosen = loop.schedule_for

    def timed_schedule(config):
        class Timed(chosen(config)):
            def step(self, *a, **kw):
                start = time.time()
                result = super().step(*a, **kw)
                spans.append((start, time.time()))
                return result

        return Timed

    loop.schedule_for = timed_schedule
    train = loop.train
    config = run_config(ARMS[args.arm], args.steps, Path(args.out) / "run", args.eval_limit, args.eval_n)
    run_dir = train(config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step", 0) >= 1]
    tokens = []
    for step in range(1, args.steps + 1):
        lines = (run_dir / "samples" / f"step-{step}.jsonl").read_text().splitlines()
        # Every turn generated once: a MOTIF episode repeats its round-1 turn in no other line.
        tokens.append(sum(t["tokens"] for line in lines for t in json.loads(line)["turns"]))
    return {"started": args.launched, "spans": spans, "adapters": {str(args.steps): str(run_dir / "adapter")},
            "generate_s": [r["time_rollout"] for r in rows], "reward_s": [r["time_reward"] for r in rows],
            "learn_s": [r["time_learn"] for r in rows], "push_s": [r["time_sync"] for r in rows],
            "generated_tokens": tokens}


def trl_arm(args) -> dict:
    """TRL's GRPOTrainer on the same rows, rewards and shape; it trains on past `steps` until it has run for
    `--wall-s` (from process start), saving the adapter at `steps` and there."""
    import dataclasses

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cluster.models import resolve_model
    from cluster.spec import response_format
    from rewards import RewardSample, build_rewards
    from rollout.engine import chat_prompt_ids

    config = run_config(SINGLE, args.steps, Path(args.out) / "run", args.eval_limit, args.eval_n)
    model_path = resolve_model(config.model, config.data.toy)
    rows = json.loads(Path(args.rows).read_text())
    r, learner = config.rollout, config.learner
    fmt = response_format(config)
    rewards = build_rewards(config.reward.components, fmt, r.max_tokens)

    def reward_func(reward):
        def score(prompts, completions, completion_ids, question, gold, **_):
            samples = [RewardSample(q, g, c[-1]["content"], (c[-1]["content"],), fmt, len(ids), (len(ids),))
                       for q, g, c, ids in zip(question, gold, completions, completion_ids, strict=True)]
            return reward.score(samples).values
        score.__name__ = reward.name
        return score

    spans, generation, tokens, adapters = [], [], [], {}
    out = Path(args.out)

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            start = time.perf_counter()
            result = super()._generate(prompts)
            generation.append(time.perf_counter() - start)
            tokens.append(sum(len(ids) for ids in result[1]))
            return result

    class Clock(TrainerCallback):
        paused = 0.0  # saving adapters: not training time

        def on_step_begin(self, a, state, control, **kw):
            self.begin = time.time()

        def on_step_end(self, a, state, control, model=None, **kw):
            spans.append((self.begin, time.time()))
            ran = time.time() - args.launched - self.paused
            stop = state.global_step >= args.steps and ran >= args.wall_s
            for name, due in ((str(args.steps), state.global_step == args.steps), ("wall", stop)):
                if due:
                    start = time.time()
                    model.save_pretrained(out / f"adapter-{name}")
                    adapters[name] = str(out / f"adapter-{name}")
                    self.paused += time.time() - start
            if stop:
                adapters["wall_steps"], adapters["wall_s"] = state.global_step, ran
                control.should_training_stop = True

    trl_config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=learner.micro_batch_size,
        gradient_accumulation_steps=learner.mini_batch_size // learner.micro_batch_size,
        num_generations=r.samples_per_prompt, max_completion_length=r.max_tokens, temperature=r.temperature,
        learning_rate=learner.learning_rate, lr_scheduler_type="constant", max_grad_norm=learner.max_grad_norm,
        max_steps=len(rows) // r.prompts_per_step, shuffle_dataset=False, seed=learner.seed,
        reward_weights=[reward.weight for reward in rewards], logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=learner.lora_rank, lora_alpha=learner.lora_alpha, lora_dropout=learner.lora_dropout,
                             target_modules=list(learner.target_modules), task_type="CAUSAL_LM")
    trainer = Timed(model=model_path, reward_funcs=[reward_func(reward) for reward in rewards], args=trl_config,
                    train_dataset=Dataset.from_list(rows), peft_config=peft_config, callbacks=[Clock()])
    rendered = trainer.processing_class.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True,
                                                             tokenize=True, return_dict=True)["input_ids"]
    if list(rendered) != chat_prompt_ids(trainer.processing_class, rows[0]["prompt"]):
        raise SystemExit("TRL renders the chat prompt differently from this project: the comparison would be unfair")
    trainer.train()
    for reward in rewards:
        reward.close()
    settings = dataclasses.asdict(trl_config)
    keys = ("loss_type", "scale_rewards", "beta", "epsilon", "bf16", "gradient_checkpointing", "top_k", "top_p",
            "num_iterations", "optim", "adam_beta1", "adam_beta2", "weight_decay", "warmup_steps")
    return {"started": args.launched, "spans": spans, "adapters": adapters, "generate_s": generation,
            "generated_tokens": tokens, "torch_threads": torch.get_num_threads(),
            "trl_settings": {k: str(settings[k]) for k in keys if k in settings}}


# --- the comparison ------------------------------------------------------------------------------------------


def launch(arm: str, out: Path, args, rows: Path | None = None, wall_s: float = 0.0) -> dict:
    command = [sys.executable, "-m", "cluster.bench.peer", "--arm", arm, "--out", str(out), "--steps",
               str(args.steps), "--launched", repr(time.time()), "--eval-limit", str(args.eval_limit), "--eval-n",
               str(args.eval_n), "--wall-s", str(wall_s)] + (["--rows", str(rows)] if rows else [])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "arm.log", "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if status:
        raise SystemExit(f"{arm} run failed (exit {status}): see {out / 'arm.log'}")
    return json.loads((out / "arm.json").read_text())


def figures(record: dict, steps: int) -> dict:
    spans = record["spans"]
    timed = slice(TIMED_FROM - 1, steps)
    step_s = [end - start for start, end in spans]
    generate = record["generate_s"][timed]
    tokens = record["generated_tokens"][timed]
    result = {"startup_s": spans[0][0] - record["started"], "step_s": step_s[:steps],
              "median_step_s": statistics.median(step_s[timed]),
              "median_generate_s": statistics.median(generate),
              "generated_tokens_per_s": sum(tokens) / sum(generate),
              "wall_to_last_step_s": spans[steps - 1][1] - record["started"]}
    if "learn_s" in record:
        result.update(median_learn_s=statistics.median(record["learn_s"][timed]),
                      median_reward_s=statistics.median(record["reward_s"][timed]),
                      median_push_s=statistics.median(record["push_s"][timed]))
    else:  # scoring, the old-logprob pass (where TRL makes one), backward and optimizer
        result["median_learn_s"] = statistics.median(s - g for s, g in zip(step_s[timed], generate))
    return result


def evaluate_adapters(args, adapters: dict[str, tuple[str, str | None]], out: Path) -> dict:
    """pass@1 (and its interval) of each adapter under its protocol, through this project's evaluation: one
    rollout pool, the same questions and sampling seeds for every adapter."""
    import ray

    from cluster.evaluation import eval_problems, evaluate, held_out_spec
    from cluster.models import resolve_model
    from cluster.workers import start_ray, start_rollout_pool
    from rollout.records import AdapterPayload

    configs = {arm: run_config(overrides, args.steps, out / "eval", args.eval_limit, args.eval_n)
               for arm, overrides in ARMS.items()}
    config = configs["motif-rl"]
    model_path = resolve_model(config.model, config.data.toy)
    problems = eval_problems(config)
    start_ray(config, out / "eval-logs")
    pool = start_rollout_pool(config, model_path)
    results = {}
    try:
        pool.wait_ready(config.cluster.ready_timeout_s)
        for version, (name, (arm, folder)) in enumerate(adapters.items(), start=1):
            if folder is not None:
                payload = AdapterPayload.from_folder(version, Path(folder))
                pool.push(payload, payload.digest, version)
            spec, rewards = held_out_spec(configs[arm], model_path)
            summary, _ = evaluate(pool, problems, spec, protocol=configs[arm].rollout.protocol)
            results[name] = {k: summary[k] for k in ("pass@1", "pass@1_ci95", "format_rate") if k in summary}
            for reward in rewards:
                reward.close()
    finally:
        pool.shutdown()
        ray.shutdown()
    return results


def compare(args) -> dict:
    require_trl()
    from cluster.models import resolve_model

    out = Path(args.out or tempfile.mkdtemp(prefix="peer-"))
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(SINGLE, args.steps, out, args.eval_limit, args.eval_n)
    resolve_model(config.model, config.data.toy)  # the warm start built (or found cached) before any clock runs
    rows = out / "rows.json"
    # Enough batches for TRL to train on for as long as this project runs (it takes shorter steps).
    rows.write_text(json.dumps(prompts_in_order(config, args.steps * 8)))
    runs = {"motif-rl": [], "trl": []}
    adapters = {"step 0 (warm start)": ("motif-rl", None)}
    for pair in range(args.pairs):
        ours = launch("motif-rl", out / f"pair{pair}" / "motif-rl", args)
        peer = launch("trl", out / f"pair{pair}" / "trl", args, rows,
                      wall_s=ours["spans"][args.steps - 1][1] - ours["started"])
        runs["motif-rl"].append(ours)
        runs["trl"].append(peer)
        adapters[f"motif-rl pair {pair}, step {args.steps}"] = ("motif-rl", ours["adapters"][str(args.steps)])
        adapters[f"trl pair {pair}, step {args.steps}"] = ("motif-rl", peer["adapters"][str(args.steps)])
        adapters[f"trl pair {pair}, equal wall ({peer['adapters']['wall_steps']} steps)"] = \
            ("motif-rl", peer["adapters"]["wall"])
    overlapped = launch("motif-rl, S=1", out / "staleness-1", args) if args.overlap else None
    if overlapped:
        adapters[f"motif-rl S=1, step {args.steps}"] = ("motif-rl, S=1", overlapped["adapters"][str(args.steps)])
    motif = launch("motif-rl, motif protocol", out / "motif-protocol", args) if args.motif else None
    if motif:
        adapters[f"motif-rl motif protocol, step {args.steps}"] = ("motif-rl, motif protocol",
                                                                   motif["adapters"][str(args.steps)])
    accuracy = evaluate_adapters(args, adapters, out)
    per_run = {name: [figures(r, args.steps) for r in records] for name, records in runs.items()}
    summary = {}
    for name, records in per_run.items():
        summary[name] = {key: statistics.median(r[key] for r in records)
                         for key in records[0] if key != "step_s"}
        # The median over every timed step of every run, beside the median of the runs' medians.
        summary[name]["median_step_s_pooled"] = statistics.median(
            s for r in records for s in r["step_s"][TIMED_FROM - 1:])
    summary["trl"]["equal_wall_steps"] = [r["adapters"]["wall_steps"] for r in runs["trl"]]
    if overlapped:
        summary["motif-rl, S=1"] = figures(overlapped, args.steps)
    if motif:
        summary["motif-rl, motif protocol"] = figures(motif, args.steps)
    return {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "pairs": args.pairs,
            "timed_steps": f"{TIMED_FROM}..{args.steps}", "cpus": os.cpu_count(),
            "eval": {"questions": args.eval_limit, "n": args.eval_n}, "summary": summary, "runs": per_run,
            "held_out": accuracy, "trl_settings": runs["trl"][0]["trl_settings"],
            "trl_torch_threads": runs["trl"][0]["torch_threads"], "out": str(out)}


def table(result: dict) -> str:
    s, steps = result["summary"], result["steps"]
    lines = [f"{'':<26}{'step s':>8}{'gen s':>8}{'learn s':>9}{'tok/s':>8}{'start s':>9}"]
    for name, f in s.items():
        lines.append(f"{name:<26}{f['median_step_s']:>8.2f}{f['median_generate_s']:>8.2f}{f['median_learn_s']:>9.2f}"
                     f"{f['generated_tokens_per_s']:>8.0f}{f['startup_s']:>9.1f}")
    lines.append(f"held-out pass@1 ({result['eval']['questions']} questions x {result['eval']['n']}; "
                 f"step {steps} unless said):")
    lines += [f"  {name:<48}{a['pass@1']:.3f}" for name, a in result["held_out"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-limit", type=int, default=64)
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--no-motif", dest="motif", action="store_false", help="skip the MOTIF protocol's run")
    parser.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help="skip the run at rollout.max_staleness=1")
    parser.add_argument("--out", help="work folder (default: a fresh temporary one)")
    parser.add_argument("--results", default=str(RESULTS))
    # One arm, run by the comparison in a fresh process.
    parser.add_argument("--arm", choices=[*ARMS, "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--wall-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.steps < TIMED_FROM:
        raise SystemExit(f"--steps must be at least {TIMED_FROM}: steps {TIMED_FROM}.. are the timed ones")
    if args.arm:
        record = trl_arm(args) if args.arm == "trl" else project_arm(args)
        (Path(args.out) / "arm.json").write_text(json.dumps(record))
        return
    result = compare(args)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"]))
    print(table(result))


if __name__ == "__main__":
    main()
