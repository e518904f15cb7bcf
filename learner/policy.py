"""The trainable policy: a transformers causal LM with a PEFT LoRA adapter, and its token logprobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from learner.config import LearnerConfig
from learner.records import TrainSample


def load_policy(model_path: str, config: LearnerConfig, dtype: torch.dtype = torch.float32):
    """Base model from `from_pretrained(model_path)` (hub id or local folder) with a fresh LoRA adapter, or
    the bare model when every weight is trained (`finetune: full`).

    LoRA's B matrices start at zero, so the untrained adapter reproduces the base model exactly.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if config.finetune == "full":
        return base
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


def pad_batch(samples: Sequence[TrainSample], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids, attention mask, and a mask over predicted completion tokens.

    The completion mask is aligned with targets ids[:, 1:], i.e. with the logits that predict them.
    """
    sequences = [list(s.prompt_ids) + list(s.completion_ids) for s in samples]
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    completion = torch.zeros((len(samples), width - 1))
    for i, (s, seq) in enumerate(zip(samples, sequences)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        completion[i, len(s.prompt_ids) - 1 : len(seq) - 1] = 1
    return ids.to(device), attention.to(device), completion.to(device)


def _chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float() / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(model, ids: torch.Tensor, attention: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                   chunk_tokens: int = 1024, recompute: bool = True,
                   group_chunks: Callable[[int], int] | None = None) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) under the sampling temperature, in float32; `temperature` is one
    number or one per row.

    The vocabulary projection runs `chunk_tokens` positions at a time from the final hidden states, so the
    full [batch, length, vocab] logits never exist, in fp32 or at all. With `recompute`, under autograd each
    chunk's logits are recomputed in backward instead of kept (not under ZeRO-3, whose partitioned head weight
    differs between forward and a recomputation).

    `group_chunks(n)` turns this call's chunk count into the group's largest: under ZeRO-3 every call of the
    partitioned head is a collective all ranks must join, so a rank with fewer positions makes up the
    difference with head calls on one position, at zero weight (their gradient is exactly 0).
    """
    chunks = -(-ids.shape[0] * (ids.shape[1] - 1) // chunk_tokens)
    extra = group_chunks(chunks) - chunks if group_chunks else 0
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1][:, :-1]
    targets = ids[:, 1:]
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if isinstance(temperature, torch.Tensor):  # one per row: one per position, a column to divide logits by
        temperature = temperature.to(hidden.device, torch.float32)[:, None].expand(targets.shape).reshape(-1, 1)
    head = output_head(model)
    parts = []
    for start in range(0, flat_targets.numel(), chunk_tokens):
        chunk_temperature = temperature[start : start + chunk_tokens] if isinstance(temperature, torch.Tensor) \
            else temperature
        args = (head, flat_hidden[start : start + chunk_tokens], flat_targets[start : start + chunk_tokens],
                chunk_temperature)
        if recompute and torch.is_grad_enabled():
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(*args))
    for _ in range(extra):  # kept in the graph, so that the backward gathers as often on every rank
        parts[0] = parts[0] + 0.0 * _chunk_logprobs(head, flat_hidden[:1], flat_targets[:1], 1.0).sum()
    return torch.cat(parts).view(targets.shape)


def output_head(model):
    """The vocabulary projection of a causal LM, through DeepSpeed and PEFT wrappers."""
    while not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model.get_output_embeddings()
