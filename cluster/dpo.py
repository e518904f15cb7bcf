"""`motif dpo`: preference optimisation on (prompt, chosen, rejected) rows through the same DeepSpeed learner,
the reference being the model with the adapter off (learner.objectives.dpo). The run is `motif sft`'s
(cluster/sft.py); the result is a PEFT adapter that `motif eval eval.adapter=...` and vLLM load."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from cluster.config import DPORunConfig
from cluster.model_card import write_model_card
from cluster.sft import load_rows, train_offline
from learner.records import PreferencePair


def load_pairs(config: DPORunConfig, tokenizer):
    """Tokenized pairs; malformed rows, and those where the prompt with either completion passes max_length, are
    skipped and counted."""
    return load_rows(config, tokenizer, [config.data.chosen_field, config.data.rejected_field], PreferencePair,
                     "DPO", noun="pairs")


def run_dpo(config: DPORunConfig) -> Path:
    """Train, then write `<output_dir>/adapter`; returns that folder."""
    learner, out = train_offline(config, "dpo", lambda tokenizer: load_pairs(config, tokenizer), "dpo_step")
    adapter = learner.export_adapter(str(out / "adapter"))
    write_model_card(adapter, config, "dpo", learner.model_path, out)
    tqdm.write(f"dpo: adapter written to {adapter}")
    return Path(adapter)
