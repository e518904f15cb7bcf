"""The model card (`README.md`) beside what a run exports: the final adapter of `motif train` and `motif dpo`, the
model of `motif sft`. The Hub's card layout (YAML front matter naming the base model and `library_name: peft` for
an adapter) so that the folder can be shared as PEFT adapters usually are; the body says how it was trained, how
it scored on held-out questions, and how to run it the way it was trained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from cluster.config import to_dict
from rollout.protocols import protocol_name

# The settings a reader needs to know what was trained, by section (those a config lacks are left out).
SHOWN = {
    "": ("steps", "epochs", "seed"),
    "data": ("path", "subset", "split", "limit"),
    "rollout": ("prompts_per_step", "samples_per_prompt", "max_tokens", "temperature"),
    "learner": ("finetune", "lora_rank", "lora_alpha", "target_modules", "learning_rate", "policy_loss",
                "advantage_estimator", "loss_aggregation", "credit", "clip_low", "clip_high", "kl_coef",
                "kl_in_reward_coef", "tis_cap", "mini_batch_size"),
}
# Each protocol's own rollout settings (the others' do nothing under it).
PROTOCOL_KEYS = {"single": (), "motif": ("rounds", "continuations", "continuation_temperature", "continuation_policy"),
                 "markovian": ("max_rounds", "carry", "carry_tokens", "continuations", "continuation_temperature"),
                 "self_correct": ("max_attempts",)}
METHODS = {"train": "reinforcement learning from the configured rewards", "sft": "supervised fine-tuning",
           "dpo": "direct preference optimisation on (prompt, chosen, rejected) pairs"}


def held_out(run_dir: Path) -> list[str]:
    """Each held-out evaluation of the run as a table row: step, pass@1 and its 95% interval, samples."""
    metrics = run_dir / "metrics.jsonl"
    rows = [m for m in map(json.loads, metrics.read_text().splitlines()) if "eval/pass@1" in m] \
        if metrics.is_file() else []
    return [f"| {m['step']} | {m['eval/pass@1']:.3f} | {m.get('eval/pass@1_lo', float('nan')):.3f} - "
            f"{m.get('eval/pass@1_hi', float('nan')):.3f} | {int(m.get('eval/samples', 0))} |" for m in rows]


def settings_lines(settings: dict, protocol: str | None) -> list[str]:
    shown = {**SHOWN, "rollout": (*SHOWN["rollout"], *PROTOCOL_KEYS.get(protocol, ()))}
    if settings.get("learner", {}).get("policy_loss") == "dpo" or "chosen_field" in settings.get("data", {}):
        shown["learner"] = (*shown["learner"], "dpo_beta", "dpo_label_smoothing")
    lines = []
    for section, keys in shown.items():
        values = settings.get(section, {}) if section else settings
        lines += [f"- `{section + '.' if section else ''}{key}`: {values[key]}" for key in keys
                  if key in values and values[key] is not None]
    components = settings.get("reward", {}).get("components", [])
    if components:
        lines.append("- rewards: " + ", ".join(f"{c['name']} (weight {c.get('weight', 1.0)})" for c in components))
    motivation = settings.get("reward", {}).get("motivation")
    if motivation not in (None, "none"):
        lines.append(f"- `reward.motivation`: {motivation}")
    return lines


def model_card(folder: Path, config, command: str, base_model: str, run_dir: Path) -> str:
    settings = to_dict(config)
    adapter = (folder / "adapter_config.json").is_file()
    rollout = settings.get("rollout", {})
    protocol = protocol_name(rollout.get("protocol"), rollout.get("rounds", 1)) if command == "train" else None
    front = {"base_model": base_model, "tags": ["motif-rl", command, *([protocol] if protocol else [])]}
    if adapter:
        front = {**front, "library_name": "peft", "tags": [*front["tags"], "lora"]}
    results = held_out(run_dir)
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {run_dir.name}: {'a LoRA adapter' if adapter else 'a model'} trained with motif-rl", "",
        f"Base model: `{base_model}`. Method: {METHODS[command]}"
        + (f", protocol `{protocol}` (each question answered as the protocol's episode: see motif-rl's "
           "docs/method.md)." if protocol else "."), "",
        "## Training settings", "", *settings_lines(settings, protocol), "",
        f"The whole resolved config is `{run_dir / 'config.yaml'}`.", "",
        "## Held-out results", "",
        *(["| step | pass@1 | 95% interval | samples |", "|---|---|---|---|", *results] if results else
          ["Not evaluated during the run: `motif eval` measures it."]), "",
        "## How to run it", "",
    ]
    if adapter:
        lines += [
            "As it was trained (the protocol's rounds or attempts, graded as in training):", "",
            "```", f"motif eval --config {run_dir / 'config.yaml'} eval.adapter={folder}",
            f"motif serve --config {run_dir / 'config.yaml'} eval.adapter={folder}", "```", "",
            "With PEFT (one plain generation, not the protocol's episode):", "",
            "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_model!r}), {str(folder)!r})",
            "```", "",
            f"With vLLM: `vllm serve {base_model} --enable-lora --lora-modules {run_dir.name}={folder}` (one round).",
        ]
    else:
        lines += ["A full model folder (`from_pretrained`, vLLM):", "", "```",
                  f"motif eval --config CONFIG model.path={folder}", "```"]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, config, command: str, base_model: str, run_dir: str | Path) -> Path:
    """Write `folder/README.md` in place of PEFT's template, whole or not at all; returns its path."""
    card, staging = Path(folder) / "README.md", Path(folder) / "README.md.partial"
    staging.write_text(model_card(Path(folder), config, command, base_model, Path(run_dir)))
    os.replace(staging, card)
    return card
