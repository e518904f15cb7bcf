"""RLMT on the toy task: a policy that thinks before it responds, trained against a reward model that was itself
trained on synthetic preferences, not against the rule those preferences came from.

The task is the toy task's chain of mod-10 steps (cluster/tasks/toy_task.py), whose value a tiny model cannot
state without working the steps out: thinking helps. The hidden rule is "the response states the chain's
value"; a preference pair prefers the right response to a wrong one (`preference_pairs`). A tiny
sequence-classification model is trained on the pairs (Bradley-Terry, offline on CPU) and is the only reward;
the rule is logged (an `accuracy` component of weight 0) and measured on held-out questions. The response
states the last step and the value (`c*2:3=6 \\boxed{6}`): the reward model can check that step but not where
its first value came from, so it can be exploited: the reward-model score rises while the true score falls.

Per seed, three arms of `steps` steps from the same warm start (`model.warm_start.rlmt`):
- "grpo, thinking": cluster/configs/rlmt-toy-grpo.yaml (rollout.response_format=think_response);
- "dpo, thinking": cluster/configs/rlmt-toy-dpo.yaml (on-policy DPO, best against worst under the model);
- "grpo, no thinking": the GRPO recipe with rollout.response_format=response.

    python -m cluster.bench.rlmt --seeds 0 1 2 --steps 30

Reports per arm, as mean and 95% t-interval over seeds, the reward-model score and the true score of the
training samples per step, and held-out pass@1 (the true score) at step 0 and at the end; the reward model's
held-out ranking accuracy. Prints JSON and a table; writes results.json to --out. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from cluster.bench.learning import interval, read_rows, run_one, slug
from cluster.config import ToyConfig, load_config
from cluster.tasks.toy_task import (OPERATIONS, ToyProblem, rlmt_corpus, rlmt_response, step_text,
                                    tokenizer_corpus, toy_problems)

CONFIGS = {"grpo, thinking": ("rlmt-toy-grpo", []), "dpo, thinking": ("rlmt-toy-dpo", []),
           "grpo, no thinking": ("rlmt-toy-grpo", ["rollout.response_format=response"])}


# The wrong responses of the synthetic preferences, drawn in equal shares: the last step's arithmetic wrong; a
# step right from a wrong value (one earlier step slipped); a right step whose boxed value is not its result.
REJECTED = ("arithmetic", "slipped", "mismatched")


def rejected_response(problem: ToyProblem, kind: str, rng: random.Random) -> str:
    values, last = [problem.start, *problem.values()], len(problem.steps) - 1
    op, d = problem.steps[last]
    before, after = values[last], values[-1]
    other = rng.choice([v for v in range(10) if v != after])
    if kind == "arithmetic":
        return rlmt_response(step_text(last, op, d, before, other), other)
    if kind == "slipped":
        wrong_before = [v for v in range(10) if OPERATIONS[op](v, d) != after]
        if wrong_before:  # none when the last step maps every value to one (*0 is never drawn; *5 halves them)
            wrong = rng.choice(wrong_before)
            return rlmt_response(step_text(last, op, d, wrong, OPERATIONS[op](wrong, d)), OPERATIONS[op](wrong, d))
    return rlmt_response(step_text(last, op, d, before, after), other)


def preference_pairs(task: ToyConfig, split: str, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(question, chosen, rejected) from the hidden rule: the response that states the chain's last step and
    value is preferred to a wrong one (REJECTED). The reward model reads the response alone, so it can learn
    whether the stated step is sound and the value its result, but not whether the step starts from the chain's
    true value: a sound-looking wrong response fools it, and a policy can learn to write one."""
    rng = random.Random(seed)
    pairs = []
    for i, problem in enumerate(toy_problems(task, split, count)):
        last = len(problem.steps) - 1
        op, d = problem.steps[last]
        values = [problem.start, *problem.values()]
        chosen = rlmt_response(step_text(last, op, d, values[last], values[-1]), values[-1])
        pairs.append((problem.question, chosen, rejected_response(problem, REJECTED[i % len(REJECTED)], rng)))
    return pairs


def train_reward_model(path: Path, pairs: list[tuple[str, str, str]], steps: int, batch_size: int = 32,
                       learning_rate: float = 1e-3, seed: int = 0, corpus: list[str] = ()) -> dict:
    """A tiny reward model trained on `pairs` with the Bradley-Terry loss, written to `path`."""
    import torch

    from learner.tiny_model import build_tiny_reward_model
    from rewards.reward_model import RewardModelScorer

    build_tiny_reward_model(path, seed=seed, extra_corpus=corpus)
    scorer = RewardModelScorer(str(path))
    model, tokenizer = scorer.model, scorer.tokenizer
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = random.Random(seed)
    losses = []
    for _ in range(steps):
        batch = order.sample(pairs, min(batch_size, len(pairs)))
        texts = [scorer.render(q, a) for q, chosen, rejected in batch for a in (chosen, rejected)]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        scores = model(**inputs).logits[:, 0].view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(path)
    return {"steps": steps, "pairs": len(pairs), "final_loss": sum(losses[-10:]) / len(losses[-10:])}


def ranking_accuracy(path: Path, pairs: list[tuple[str, str, str]]) -> float:
    """The share of pairs whose chosen answer the reward model scores above the rejected one."""
    from rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(str(path))
    chosen = scorer.score([q for q, _, _ in pairs], [c for _, c, _ in pairs])
    rejected = scorer.score([q for q, _, _ in pairs], [r for _, _, r in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def prepare_reward_model(out: Path, task: ToyConfig, pairs: int, steps: int, batch_size: int,
                         seed: int) -> tuple[Path, dict]:
    """The reward model under `out` (built once), and its training and held-out ranking figures."""
    path, summary = out / "reward-model", out / "reward-model.json"
    if summary.is_file() and (path / "config.json").is_file():
        return path, json.loads(summary.read_text())
    corpus = tokenizer_corpus(task) + rlmt_corpus()
    figures = train_reward_model(path, preference_pairs(task, "train", pairs, seed), steps, batch_size, seed=seed,
                                 corpus=corpus)
    figures["held_out_ranking_accuracy"] = ranking_accuracy(path, preference_pairs(task, "test", 256, seed + 1))
    summary.write_text(json.dumps(figures, indent=1) + "\n")
    return path, figures


def reward_override(model: Path) -> str:
    """The recipes' reward components, with the reward model this benchmark trained."""
    return (f"reward.components=[{{name: reward_model, model: '{model}', strict: true, weight: 1.0}}, "
            "{name: accuracy, weight: 0.0}]")


def run_figures(run_dir: Path, steps: int) -> dict | None:
    """One finished run's training figures per step and its held-out pass@1 at step 0 and at the end."""
    rows = read_rows(run_dir / "metrics.jsonl")
    evals = {r["step"]: r["eval/pass@1"] for r in rows if "eval/pass@1" in r}
    if not {0, steps} <= evals.keys():
        return None
    trained = {r["step"]: r for r in rows if "reward/reward_model" in r}
    return {"pass@1/start": evals[0], "pass@1/end": evals[steps],
            "reward_model": [trained[s]["reward/reward_model"] if s in trained else None for s in range(1, steps + 1)],
            "true_score": [trained[s].get("reward/accuracy") if s in trained else None for s in range(1, steps + 1)]}


def summarise(by_arm: dict[str, list[dict]], steps: int) -> dict:
    """Per arm: held-out pass@1 at the start and end, and per step the mean and half-width over seeds."""
    summary = {}
    for arm, runs in by_arm.items():
        entry = {"runs": len(runs)}
        for key in ("pass@1/start", "pass@1/end"):
            entry[key] = interval([run[key] for run in runs])
        for key in ("reward_model", "true_score"):
            entry[key] = [interval(values) if (values := [run[key][s] for run in runs if run[key][s] is not None])
                          else None for s in range(steps)]
        summary[arm] = entry
    return summary


def table(summary: dict) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value[0]:.3f} +-{value[1]:.3f}"

    lines = [f"{'arm':<20} {'pass@1 start':>16} {'pass@1 end':>16} {'rm score first':>16} {'rm score last':>16} "
             f"{'true first':>16} {'true last':>16}"]
    for arm, s in summary.items():
        lines.append(f"{arm:<20} {cell(s['pass@1/start']):>16} {cell(s['pass@1/end']):>16} "
                     f"{cell(s['reward_model'][0]):>16} {cell(s['reward_model'][-1]):>16} "
                     f"{cell(s['true_score'][0]):>16} {cell(s['true_score'][-1]):>16}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--arms", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="ARM")
    parser.add_argument("--rm-pairs", type=int, default=4000, help="synthetic preference pairs")
    parser.add_argument("--rm-steps", type=int, default=1500, help="Bradley-Terry steps of --rm-batch pairs")
    parser.add_argument("--rm-batch", type=int, default=32)
    parser.add_argument("--prepare-only", action="store_true", help="train the reward model and stop")
    parser.add_argument("--out", default="runs/rlmt-toy")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The reward model learns the task the runs train on, difficulty and seed included.
    task = load_config(CONFIGS["grpo, thinking"][0], args.overrides).data.toy
    model, rm_figures = prepare_reward_model(out, task, args.rm_pairs, args.rm_steps, args.rm_batch, task.seed)
    print(f"reward model: {model} {json.dumps(rm_figures)}")
    if args.prepare_only:
        return rm_figures
    by_arm: dict[str, list[dict]] = {}
    for seed in args.seeds:
        common = [f"steps={args.steps}", f"eval.every={args.every}", f"rollout.seed={seed}", f"learner.seed={seed}",
                  f"data.shuffle_seed={seed}", "checkpoint.every=0", reward_override(model), *args.overrides]
        for arm in args.arms:
            config, extra = CONFIGS[arm]
            run_dir = out / slug(arm) / f"seed{seed}"
            record = run_one(run_dir, ["--config", config, *common, *extra], args.steps)
            figures = run_figures(run_dir, args.steps)
            if figures is None:
                print(f"{arm}, seed {seed}: no result (exit {record.get('returncode')}; see {run_dir}/benchmark.log)")
                continue
            by_arm.setdefault(arm, []).append(figures)
    results = {"steps": args.steps, "seeds": args.seeds, "overrides": args.overrides, "reward_model": rm_figures,
               "arms": summarise(by_arm, args.steps)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    print(table(results["arms"]))
    return results


if __name__ == "__main__":
    main()
