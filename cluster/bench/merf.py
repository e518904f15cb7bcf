"""A warm start for MeRF's ablation that has read every motivation mode's system prompt.

The toy warm start is trained under one system prompt, so any motivation text is new to it: at step 0 every
motivated arm fell from 0.76 to 0.01 held-out pass@1 (docs/benchmarks.md), which measures the prompt's novelty,
not what it says. This fine-tunes the warm start by `motif sft` on fresh traces whose system prompts are, in
turn, each mode's (`none` included), exactly as a run in that mode writes them (cluster.spec.rollout_spec), so
that the arms start level and differ only in what RL makes of the text. The traces are the same whatever the
prompt says: a model that learns to act on the text has to do so in RL, as MeRF's models do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cluster.config import RunConfig, SFTDataConfig, SFTRunConfig, load_config, to_dict
from cluster.models import TOY_WARM_START, resolve_model
from cluster.spec import response_format, rollout_spec
from cluster.tasks.toy_task import sft_rows
from cluster.tasks.warm_start import warm_start_plan
from learner.config import LearnerConfig
from rewards import build_rewards
from rewards.motivation import MODES
from rollout.common import replace_directory

STEPS = 300
PROBLEMS = 1000


def mode_prompts(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Per motivation mode, the (progress rounds', last round's) system prompts a run of `config` writes."""
    r = config.rollout
    rewards = build_rewards(config.reward.components, response_format(config), r.max_tokens)
    prompts = {}
    for mode in MODES:
        told = dataclasses.replace(config, reward=dataclasses.replace(config.reward, motivation=mode))
        spec = rollout_spec(told, rewards)
        prompts[mode] = (spec.system_prompt, spec.final_system_prompt)
    return prompts


def motivation_rows(config: RunConfig, count: int, seed: int) -> list[dict]:
    """The warm start's kind of traces for `count` train problems, each row's system prompt the next mode's in
    turn: a round that answers gets the last round's prompt, the others the progress rounds'."""
    prompts = mode_prompts(config)
    settings = config.model.warm_start
    rows = sft_rows(config.data.toy, count, tuple(settings.rounds), settings.error_rate, seed=seed)
    for i, row in enumerate(rows):
        progress, last = prompts[MODES[i % len(MODES)]]
        system = row["prompt"][0]
        assert system["role"] == "system"  # the toy traces open with one
        system["content"] = last if "<answer>" in row["response"] else progress
    return rows


def prompt_varied_warm_start(out: Path, config_name: str, overrides: list[str], build: bool = True) -> Path:
    """The run's warm start (config `config_name` under `overrides`) fine-tuned on `motivation_rows`, built once
    under `out` per everything that shapes it (the warm start, the task, the modes' prompts, this fine-tune's
    settings); with `build` False, only where it is or would be."""
    config = load_config(config_name, overrides)
    settings, toy = config.model.warm_start, config.data.toy
    learning_rate = settings.learning_rate / 3
    base = warm_start_plan(settings, toy)[2] if config.model.path == TOY_WARM_START else config.model.path
    key_material = json.dumps([base, mode_prompts(config), dataclasses.asdict(toy), STEPS, PROBLEMS, learning_rate])
    key = hashlib.sha256(key_material.encode()).hexdigest()[:12]
    folder = out / "motivation-warm-start" / f"ops{toy.operations}-ws{settings.seed}-{key}"
    if not build or (folder / "model" / "config.json").is_file():
        return folder / "model"

    def write(work: Path) -> None:
        work.mkdir(parents=True)
        # The warm start's problems (toy_problems depends on the task alone) with other slips than its traces'.
        rows = motivation_rows(config, PROBLEMS, seed=settings.seed + 1000)
        (work / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        sft = SFTRunConfig(
            output_dir=str(work), steps=STEPS, seed=settings.seed,
            model=dataclasses.replace(config.model, path=resolve_model(config.model, toy)),
            data=SFTDataConfig(path=str(work / "rows.jsonl")),
            learner=LearnerConfig(finetune="full", learning_rate=learning_rate, warmup_steps=30,
                                  mini_batch_size=settings.batch_size, micro_batch_size=settings.batch_size,
                                  seed=settings.seed))
        (work / "sft.yaml").write_text(yaml.safe_dump(to_dict(sft), sort_keys=False))
        subprocess.run([sys.executable, "-m", "cluster.cli", "sft", "--config", str(work / "sft.yaml")], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})

    replace_directory(folder, write)
    return folder / "model"
