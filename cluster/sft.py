"""`motif sft`: supervised fine-tuning on chat-formatted (prompt, response) rows, through the same DeepSpeed
learner that runs GRPO. The loss covers response tokens only; the result is a model folder that
`motif train model.path=...` and vLLM load. The loading of rows and the run itself are shared with `motif dpo`
(cluster/dpo.py)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.config import BadInput, SFTRunConfig, to_dict
from cluster.console import quiet_driver
from cluster.tasks.data import LoadReport, json_objects, jsonl_rows
from cluster.metrics import MetricsLog
from cluster.model_card import write_model_card
from cluster.models import resolve_model
from cluster.tasks.toy_task import ToyConfig
from learner.records import SFTSample
from rollout.engine import chat_prompt_ids


def _messages(prompt) -> list[dict[str, str]] | None:
    """A row's prompt as chat messages: a string is one user message."""
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    return None


def load_rows(config: SFTRunConfig, tokenizer, fields: list[str], make: Callable, kind: str,
              noun: str = "rows") -> tuple[list, LoadReport]:
    """`make(prompt_ids, *completion_ids)` for each usable row: the prompt rendered by the chat template exactly
    as at sampling time, each completion (the text of one of `fields`) followed by the end-of-turn token.
    Malformed rows, and those where the prompt and a completion together pass max_length, are skipped and
    counted; `kind` names the rows in the error when none is left."""
    data, report, items = config.data, LoadReport(noun=noun), []
    if not Path(data.path).is_file():
        raise BadInput(f"data.path {data.path}: no such file")
    for i, row in json_objects(jsonl_rows(data.path), report):
        if data.limit is not None and len(items) >= data.limit:
            break
        messages, texts = _messages(row.get(data.prompt_field)), [row.get(name) for name in fields]
        if messages is None:
            report.skip(i, f"'{data.prompt_field}' is not a string or a list of {{role, content}} messages")
            continue
        empty = next((name for name, text in zip(fields, texts) if not isinstance(text, str) or not text.strip()), None)
        if empty is not None:
            report.skip(i, f"missing or empty '{empty}'")
            continue
        prompt_ids = chat_prompt_ids(tokenizer, messages)
        completions = [tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] for text in texts]
        if len(prompt_ids) + max(len(c) for c in completions) > config.max_length:
            report.skip(i, f"longer than max_length={config.max_length} tokens")
            continue
        items.append(make(prompt_ids, *completions))
    report.loaded = len(items)
    if not items:
        raise BadInput(f"data.path {data.path}: no usable {kind} rows; {report.summary()}")
    return items, report


def load_sft_samples(config: SFTRunConfig, tokenizer) -> tuple[list[SFTSample], LoadReport]:
    """Tokenized (prompt, response) rows; malformed or over-long rows are skipped and counted."""
    return load_rows(config, tokenizer, [config.data.response_field], SFTSample, "SFT")


def train_offline(config: SFTRunConfig, name: str, load: Callable, step: str):
    """The run `motif sft` and `motif dpo` make in this process, without Ray: the config and metrics go to the
    output folder; `load(tokenizer)` gives the items and their load report; each step trains the next
    `learner.mini_batch_size` of them (through the learner method `step`), each epoch in an order shuffled by
    `seed`. Returns the learner and the output folder, for the export."""
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not config.show_logs:
        quiet_driver(out / "logs")  # before transformers imports DeepSpeed, which logs on import
    from transformers import AutoTokenizer

    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    model_path = resolve_model(config.model, ToyConfig())
    items, report = load(AutoTokenizer.from_pretrained(model_path))
    tqdm.write(f"{name} data: {report.summary()}")
    from learner.actor import GRPOLearner  # after the data is known to be usable: DeepSpeed takes seconds to import
    batch = config.learner.mini_batch_size
    steps = config.steps or config.epochs * math.ceil(len(items) / batch)
    learner_config = config.learner
    if not learner_config.decay_steps:
        learner_config = dataclasses.replace(learner_config, decay_steps=max(steps, learner_config.warmup_steps + 1))
    from learner.rendezvous import rendezvous_address

    master = rendezvous_address("127.0.0.1")  # a file, removed when the run ends
    learner = GRPOLearner(model_path, learner_config, master=master)
    rng = random.Random(config.seed)
    order: list = []
    log = MetricsLog(out, echo=False)
    try:
        progress = tqdm(range(1, steps + 1), desc=name, unit="step")
        for index in progress:
            if len(order) < batch:
                epoch = list(items)
                rng.shuffle(epoch)
                order += epoch
            metrics = getattr(learner, step)(order[:batch])
            del order[:batch]
            log.log(index, metrics)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.1e}")
    finally:
        log.close()
        Path(master.removeprefix("file://")).unlink(missing_ok=True)
    return learner, out


def run_sft(config: SFTRunConfig) -> Path:
    """Train, then write `<output_dir>/model` (merged weights + tokenizer); returns that folder."""
    learner, out = train_offline(config, "sft", lambda tokenizer: load_sft_samples(config, tokenizer), "sft_step")
    model = learner.export_model(str(out / "model"))
    write_model_card(model, config, "sft", learner.model_path, out)
    tqdm.write(f"sft: model written to {model}")
    return Path(model)
