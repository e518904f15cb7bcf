"""`motif sft`: supervised fine-tuning on chat-formatted (prompt, response) rows, through the same DeepSpeed
learner that runs GRPO. The loss covers response tokens only; the result is a model folder that
`motif train model.path=...` and vLLM load."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import yaml
from tqdm import tqdm

from cluster.config import BadInput, SFTRunConfig, to_dict
from cluster.console import quiet_driver
from cluster.tasks.data import LoadReport, json_objects, jsonl_rows
from cluster.metrics import MetricsLog
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


def load_sft_samples(config: SFTRunConfig, tokenizer) -> tuple[list[SFTSample], LoadReport]:
    """Tokenized rows: the prompt rendered by the chat template exactly as at sampling time, the response
    followed by the end-of-turn token. Malformed or over-long rows are skipped and counted."""
    data, report, samples = config.data, LoadReport(noun="rows"), []
    if not Path(data.path).is_file():
        raise BadInput(f"data.path {data.path}: no such file")
    for i, row in json_objects(jsonl_rows(data.path), report):
        if data.limit is not None and len(samples) >= data.limit:
            break
        messages, response = _messages(row.get(data.prompt_field)), row.get(data.response_field)
        if messages is None:
            report.skip(i, f"'{data.prompt_field}' is not a string or a list of {{role, content}} messages")
            continue
        if not isinstance(response, str) or not response.strip():
            report.skip(i, f"missing or empty '{data.response_field}'")
            continue
        prompt_ids = chat_prompt_ids(tokenizer, messages)
        completion_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(prompt_ids) + len(completion_ids) > config.max_length:
            report.skip(i, f"longer than max_length={config.max_length} tokens")
            continue
        samples.append(SFTSample(prompt_ids, completion_ids))
    report.loaded = len(samples)
    if not samples:
        raise BadInput(f"data.path {data.path}: no usable SFT rows; {report.summary()}")
    return samples, report


def run_sft(config: SFTRunConfig) -> Path:
    """Train, then write `<output_dir>/model` (merged weights + tokenizer); returns that folder."""
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not config.show_logs:
        quiet_driver(out / "logs")  # before transformers imports DeepSpeed, which logs on import
    from transformers import AutoTokenizer

    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    model_path = resolve_model(config.model, ToyConfig())
    samples, report = load_sft_samples(config, AutoTokenizer.from_pretrained(model_path))
    tqdm.write(f"sft data: {report.summary()}")
    from learner.actor import GRPOLearner  # after the data is known to be usable: DeepSpeed takes seconds to import
    batch = config.learner.mini_batch_size
    steps = config.steps or config.epochs * math.ceil(len(samples) / batch)
    learner_config = config.learner
    if not learner_config.decay_steps:
        learner_config = dataclasses.replace(learner_config, decay_steps=max(steps, learner_config.warmup_steps + 1))
    from learner.rendezvous import rendezvous_address

    master = rendezvous_address("127.0.0.1")  # a file, removed when the run ends
    learner = GRPOLearner(model_path, learner_config, master=master)
    rng = random.Random(config.seed)
    order: list[SFTSample] = []
    log = MetricsLog(out, echo=False)
    try:
        progress = tqdm(range(1, steps + 1), desc="sft", unit="step")
        for step in progress:
            if len(order) < batch:
                epoch = list(samples)
                rng.shuffle(epoch)
                order += epoch
            metrics = learner.sft_step(order[:batch])
            del order[:batch]
            log.log(step, metrics)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.1e}")
    finally:
        log.close()
        Path(master.removeprefix("file://")).unlink(missing_ok=True)
    model = learner.export_model(str(out / "model"))
    tqdm.write(f"sft: model written to {model}")
    return Path(model)
