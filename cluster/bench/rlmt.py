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

The reward model starts from that warm start's trunk, as reward models start from a language model.

Reports per arm, as mean and 95% t-interval over seeds, the reward-model score and the true score of the
training samples per step, held-out pass@1 (the true score) at step 0 and at the end, and what the held-out
responses are then (right, or which kind of wrong: `response_kind`); the reward model's held-out ranking
accuracy, per kind of rejected answer. Prints JSON and a table; writes results.json and curves.png to --out.
Finished runs are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import shutil
import statistics
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cluster.bench.learning import interval, read_rows, run_one, slug
from cluster.config import RunConfig, ToyConfig, load_config
from cluster.tasks.toy_task import LETTERS, OPERATIONS, ToyProblem, rlmt_response, step_text, toy_problems
from cluster.tasks.warm_start import ensure_toy_warm_start
from rewards.format import strip_thinking
from rollout.common import replace_directory

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


def reward_model_from(language_model: Path, path: Path) -> None:
    """A one-score sequence classifier at `path` with the trunk of `language_model` and a fresh score head: reward
    models start from a language model (RLMT's from instruct models), since one trained from scratch on a few
    thousand pairs must learn the task's arithmetic from the preference signal alone (a tiny one trained so
    stayed at chance, loss ln 2)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    model = AutoModelForSequenceClassification.from_pretrained(language_model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def train_reward_model(path: Path, language_model: Path, pairs: list[tuple[str, str, str]], steps: int,
                       batch_size: int = 32, learning_rate: float = 3e-4, seed: int = 0) -> dict:
    """A reward model from `language_model`, trained on `pairs` with the Bradley-Terry loss, written to `path`."""
    import torch

    from rewards.reward_model import RewardModelScorer

    reward_model_from(language_model, path)
    scorer = RewardModelScorer(str(path))
    model, tokenizer = scorer.model, scorer.tokenizer
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = random.Random(seed)
    losses = []
    progress = tqdm(range(steps), desc="reward model", unit="step")
    for _ in progress:
        batch = order.sample(pairs, min(batch_size, len(pairs)))
        texts = [scorer.render(q, a) for q, chosen, rejected in batch for a in (chosen, rejected)]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        scores = model(**inputs).logits[:, 0].view(-1, 2)
        loss = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    model.save_pretrained(path)
    return {"final_loss": sum(losses[-10:]) / len(losses[-10:])}


def ranking_accuracy(path: Path, pairs: list[tuple[str, str, str]]) -> dict[str, float]:
    """The share of pairs whose chosen answer the reward model scores above the rejected one: over all pairs, and
    per kind of rejected answer (`preference_pairs` draws REJECTED in turn). A "slipped" answer is sound on its
    face, so about 0.5 is all a model that reads the response can reach there."""
    from rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(str(path))
    chosen = scorer.score([q for q, _, _ in pairs], [c for _, c, _ in pairs])
    rejected = scorer.score([q for q, _, _ in pairs], [r for _, _, r in pairs])
    right = [c > r for c, r in zip(chosen, rejected)]
    by_kind = {kind: right[i::len(REJECTED)] for i, kind in enumerate(REJECTED)}
    return {"all": sum(right) / len(right)} | {kind: sum(r) / len(r) for kind, r in by_kind.items()}


def prepare_reward_model(out: Path, config: RunConfig, pairs: int, steps: int, batch_size: int,
                         learning_rate: float) -> tuple[Path, dict]:
    """The reward model under `out` from the runs' warm start, built once per setting, and its training and
    held-out ranking figures. A new one discards the runs trained against the one before."""
    path, summary = out / "reward-model", out / "reward-model.json"
    task, seed = config.data.toy, config.data.toy.seed
    language_model = ensure_toy_warm_start(config.model.warm_start, task)
    settings = {"initialised_from": str(language_model), "task": dataclasses.asdict(task), "pairs": pairs,
                "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate}
    if summary.is_file() and (path / "config.json").is_file():
        figures = json.loads(summary.read_text())
        if figures.get("settings") == settings:
            return path, figures
    for arm in CONFIGS:
        shutil.rmtree(out / slug(arm), ignore_errors=True)
    figures = {"settings": settings}
    # Swapped in whole: the recipes read this folder, and an interrupted build must not leave half a model there.
    replace_directory(path, lambda staging: figures.update(train_reward_model(
        staging, language_model, preference_pairs(task, "train", pairs, seed), steps, batch_size, learning_rate,
        seed=seed)))
    figures["held_out_ranking_accuracy"] = ranking_accuracy(path, preference_pairs(task, "test", 258, seed + 1))
    summary.write_text(json.dumps(figures, indent=1) + "\n")
    return path, figures


def reward_override(model: Path) -> str:
    """The recipes' reward components, with the reward model this benchmark trained."""
    return (f"reward.components=[{{name: reward_model, model: '{model}', strict: true, weight: 1.0}}, "
            "{name: accuracy, weight: 0.0}]")


RESPONSE = re.compile(r"([a-z])([+*-])(\d):(\d)=(\d) \\boxed\{(\d)\}")
KINDS = ("right", *REJECTED, "other step", "malformed")
WINDOW = 5


def response_kind(text: str, problem: ToyProblem) -> str:
    """What a sampled response to `problem` is, by the preferences' kinds: right (the chain's value), one of
    REJECTED's wrong kinds, a well-formed step that is not the chain's last ("other step"), or malformed. A
    rising share of "slipped" is the reward model being exploited: a sound last step from a wrong value is the
    wrong response it cannot tell from a right one."""
    match = RESPONSE.fullmatch(strip_thinking(text))
    if match is None:
        return "malformed"
    letter, op, operand, before, after, boxed = match.groups()
    if boxed == problem.answer:
        return "right"
    last = len(problem.steps) - 1
    if (letter, op, int(operand)) != (LETTERS[last], *problem.steps[last]):
        return "other step"
    if OPERATIONS[op](int(before), int(operand)) != int(after):
        return "arithmetic"
    return "mismatched" if boxed != after else "slipped"


def response_kinds(samples: Path, problems: list[ToyProblem]) -> dict[str, float]:
    """The share of each kind among the held-out responses in one evaluation's samples.jsonl (`problems`: the
    held-out questions in the evaluation's order)."""
    kinds = Counter(response_kind(row["rounds"][-1], problems[row["question_id"]]) for row in read_rows(samples))
    return {kind: kinds[kind] / max(1, sum(kinds.values())) for kind in KINDS}


def run_figures(run_dir: Path, steps: int, problems: list[ToyProblem]) -> dict | None:
    """One finished run's training figures per step, its held-out pass@1 at step 0 and at the end, and the
    kinds of its held-out responses then."""
    rows = read_rows(run_dir / "metrics.jsonl")
    evals = {r["step"]: r["eval/pass@1"] for r in rows if "eval/pass@1" in r}
    if not {0, steps} <= evals.keys():
        return None
    trained = {r["step"]: r for r in rows if "reward/reward_model" in r}
    return {"pass@1/start": evals[0], "pass@1/end": evals[steps],
            "kinds/start": response_kinds(run_dir / "eval" / "step-0" / "samples.jsonl", problems),
            "kinds/end": response_kinds(run_dir / "eval" / f"step-{steps}" / "samples.jsonl", problems),
            "reward_model": [trained[s]["reward/reward_model"] if s in trained else None for s in range(1, steps + 1)],
            "true_score": [trained[s].get("reward/accuracy") if s in trained else None for s in range(1, steps + 1)]}


def summarise(by_arm: dict[str, list[dict]], steps: int) -> dict:
    """Per arm: held-out pass@1 and response kinds at the start and end, and per step the mean and half-width
    over seeds."""
    summary = {}
    for arm, runs in by_arm.items():
        entry = {"runs": len(runs)}
        for key in ("pass@1/start", "pass@1/end"):
            entry[key] = interval([run[key] for run in runs])
        for key in ("kinds/start", "kinds/end"):
            entry[key] = {kind: interval([run[key][kind] for run in runs]) for kind in KINDS}
        for key in ("reward_model", "true_score"):
            entry[key] = [interval(values) if (values := [run[key][s] for run in runs if run[key][s] is not None])
                          else None for s in range(steps)]
            # One step's 32 samples of 4 prompts are noisy: the first and last WINDOW steps, averaged per run.
            for name, part in (("first", slice(None, WINDOW)), ("last", slice(-WINDOW, None))):
                means = [statistics.fmean(window) for run in runs
                         if (window := [v for v in run[key][part] if v is not None])]
                entry[f"{key}/{name}"] = interval(means) if means else None
        summary[arm] = entry
    return summary


def plot(out: Path, summary: dict, steps: int) -> Path:
    """Per arm, the reward-model score and the true score of the training samples per step (mean over seeds,
    over WINDOW steps), and held-out pass@1 at the start and end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scores, truth) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for arm, entry in summary.items():
        for ax, key in ((scores, "reward_model"), (truth, "true_score")):
            means = [None if v is None else v[0] for v in entry[key]]
            smooth = [statistics.fmean(window) if (window := [m for m in means[max(0, i - WINDOW + 1): i + 1]
                                                              if m is not None]) else None for i in range(steps)]
            line, = ax.plot(range(1, steps + 1), smooth, label=arm)
        truth.plot([0, steps], [entry["pass@1/start"][0], entry["pass@1/end"][0]], "o--", color=line.get_color(),
                   label=f"{arm}, held-out pass@1")
    scores.set_title(f"reward-model score (training samples, {WINDOW}-step mean)", fontsize=10)
    truth.set_title("true score: the rule the preferences came from", fontsize=10)
    for ax in (scores, truth):
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(summary: dict) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value[0]:.3f} +-{value[1]:.3f}"

    heads = ("pass@1 start", "pass@1 end", f"rm first {WINDOW}", f"rm last {WINDOW}", f"true first {WINDOW}",
             f"true last {WINDOW}", "slipped start", "slipped end")
    lines = [f"{'arm':<20} " + " ".join(f"{h:>16}" for h in heads)]
    for arm, s in summary.items():
        cells = (s["pass@1/start"], s["pass@1/end"], s["reward_model/first"], s["reward_model/last"],
                 s["true_score/first"], s["true_score/last"], s["kinds/start"]["slipped"], s["kinds/end"]["slipped"])
        lines.append(f"{arm:<20} " + " ".join(f"{cell(c):>16}" for c in cells))
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
    parser.add_argument("--rm-lr", type=float, default=3e-4)
    parser.add_argument("--prepare-only", action="store_true", help="train the reward model and stop")
    parser.add_argument("--out", default="runs/rlmt-toy")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The reward model learns the task the runs train on, difficulty and seed included, from their warm start.
    config = load_config(CONFIGS["grpo, thinking"][0], args.overrides)
    model, rm_figures = prepare_reward_model(out, config, args.rm_pairs, args.rm_steps, args.rm_batch, args.rm_lr)
    print(f"reward model: {model} {json.dumps(rm_figures)}")
    if args.prepare_only:
        return rm_figures
    held_out = toy_problems(config.data.toy, "test", config.eval.limit)  # in the evaluation's order
    by_arm: dict[str, list[dict]] = {}
    for seed in args.seeds:
        common = [f"steps={args.steps}", f"eval.every={args.every}", f"rollout.seed={seed}", f"learner.seed={seed}",
                  f"data.shuffle_seed={seed}", "checkpoint.every=0", reward_override(model), *args.overrides]
        for arm in args.arms:
            recipe, extra = CONFIGS[arm]
            run_dir = out / slug(arm) / f"seed{seed}"
            record = run_one(run_dir, ["--config", recipe, *common, *extra], args.steps)
            figures = run_figures(run_dir, args.steps, held_out)
            if figures is None:
                print(f"{arm}, seed {seed}: no result (exit {record.get('returncode')}; see {run_dir}/benchmark.log)")
                continue
            by_arm.setdefault(arm, []).append(figures)
    results = {"steps": args.steps, "seeds": args.seeds, "overrides": args.overrides, "reward_model": rm_figures,
               "arms": summarise(by_arm, args.steps)}
    results["plot"] = str(plot(out, results["arms"], args.steps))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    print(table(results["arms"]))
    return results


if __name__ == "__main__":
    main()
