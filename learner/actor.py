"""Ray actor that trains the LoRA policy with GRPO inside DeepSpeed and exports the adapter."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

import ray
import torch

from learner.config import LearnerConfig
from learner.losses import POLICY_LOSSES, k3_kl
from learner.policy import load_policy, pad_batch, token_logprobs
from learner.records import SFTSample, TrainSample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lr_schedule(config: LearnerConfig):
    """Multiplier of the learning rate at optimizer step s: linear warm-up over warmup_steps (step 0 already
    trains), then linear decay to 0 at decay_steps; constant when decay_steps is 0."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if not config.decay_steps:
            return warm
        return warm * max(0.0, (config.decay_steps - step) / (config.decay_steps - config.warmup_steps)) \
            if step >= config.warmup_steps else warm

    return factor


def deepspeed_config(config: LearnerConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        # Accumulation boundaries are set explicitly per mini-batch (its size can vary when prompts are
        # skipped), so DeepSpeed's own counter stays at 1.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": bf16},
        # torch's AdamW: avoids JIT-compiling DeepSpeed's fused Adam op (minutes on a small CPU machine).
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": config.learning_rate, "weight_decay": config.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def replace_directory(target: Path, write) -> Path:
    """Write a folder through `write(staging_path)`, then swap it in for `target`: a reader never sees a half
    folder, and an old `target` is only deleted once the new one is in place."""
    staging = target.with_name(target.name + ".partial")
    retired = target.with_name(target.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    write(staging)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


class GRPOLearner:
    """The one training stack: GRPO (LoRA; the reference policy is the same model, adapter off) and SFT (LoRA or
    full) steps in a DeepSpeed engine, and the exports that vLLM loads."""

    def __init__(self, model_path: str, config: LearnerConfig, *, temperature: float = 1.0, num_threads: int | None = None):
        import importlib

        import deepspeed

        # `deepspeed.comm` re-exports the torch package as `torch`, so fetch the submodule by name.
        ds_torch_comm = importlib.import_module("deepspeed.comm.torch")

        config.validate()
        self.config, self.temperature, self.model_path = config, temperature, model_path
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(config.seed)
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                           "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)
        if not cuda:
            # The shared-memory allreduce kernel only speeds up multi-rank CPU groups and costs a ~100 s
            # JIT build on first use; gloo does the (single-rank) collectives fine without it.
            ds_torch_comm.build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")

        model = load_policy(model_path, config, dtype=torch.bfloat16 if cuda else torch.float32)
        from transformers import AutoTokenizer

        self.pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id or 0
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(config, bf16=cuda),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config)),
        )
        # DeepSpeed reports the pre-clip gradient norm only from its ZeRO / bf16 optimizers; with plain
        # fp32 stage 0 it clips in place and discards the norm, so it is measured here instead.
        self._plain_fp32 = config.zero_stage == 0 and not cuda

    def _local_grad_norm(self) -> float:
        grads = [p.grad.detach().float() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def _logprobs(self, samples: Sequence[TrainSample], *, with_adapter: bool = True):
        ids, attention, mask = pad_batch(samples, self.pad_id, self.device)
        if with_adapter:
            return token_logprobs(self.engine, ids, attention, self.temperature), mask
        with self.engine.module.disable_adapter():
            return token_logprobs(self.engine.module, ids, attention, self.temperature), mask

    def _micro_batches(self, samples: Sequence):
        size = self.config.micro_batch_size
        return [list(samples[i : i + size]) for i in range(0, len(samples), size)]

    def _update(self, mini: Sequence, micro_loss) -> tuple[dict[str, float], float | None]:
        """One optimizer step on a mini-batch, accumulated over its micro-batches.

        `micro_loss(micro, logprobs, mask)` gives per-token losses and extra per-token statistics; the loss is
        a token mean over the whole mini-batch, however it is split. Returns the statistics' token sums and
        the pre-clip gradient norm.
        """
        mini_tokens = max(sum(len(s.completion_ids) for s in mini), 1)
        micros = self._micro_batches(mini)
        sums: dict[str, float] = {"loss": 0.0, "tokens": 0.0}
        grad_norm = None
        for i, micro in enumerate(micros):
            logprobs, mask = self._logprobs(micro)
            per_token, stats = micro_loss(micro, logprobs, mask)
            loss = (per_token * mask).sum() / mini_tokens
            boundary = i == len(micros) - 1
            self.engine.set_gradient_accumulation_boundary(boundary)
            self.engine.backward(loss, scale_wrt_gas=False)
            if boundary and self._plain_fp32:
                grad_norm = self._local_grad_norm()
            self.engine.step()
            sums["loss"] += float(loss.detach()) * mini_tokens
            sums["tokens"] += float(mask.sum())
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float((value.detach() * mask).sum())
        if not self._plain_fp32 and self.engine.get_global_grad_norm() is not None:
            grad_norm = float(self.engine.get_global_grad_norm())
        return sums, grad_norm

    def score(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        """Each completion's per-token logprobs under the current policy (at the sampling temperature)."""
        self.engine.eval()
        out = []
        with torch.no_grad():
            for micro in self._micro_batches(samples):
                logprobs, mask = self._logprobs(micro)
                out += [row[m.bool()].tolist() for row, m in zip(logprobs, mask)]
        return out

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One GRPO update pass over the batch: len(samples)/mini_batch_size optimizer steps."""
        if not samples:
            raise ValueError("train_step got an empty batch")
        cfg = self.config
        self.engine.train()
        micros = self._micro_batches(samples)
        with torch.no_grad():
            old = iter([self._logprobs(mb)[0] for mb in micros])
            # The reference pass only feeds the KL term.
            ref = iter([self._logprobs(mb, with_adapter=False)[0] if cfg.kl_coef else None for mb in micros])
        policy_loss = POLICY_LOSSES[cfg.policy_loss]

        def grpo_loss(micro, logprobs, mask):
            old_lp, ref_lp = next(old), next(ref)
            adv = torch.tensor([s.advantage for s in micro], dtype=torch.float32, device=self.device)[:, None]
            per_token, clipped = policy_loss(logprobs, old_lp, adv, clip_low=cfg.clip_low, clip_high=cfg.clip_high)
            if ref_lp is None:
                return per_token, {"clip_frac": clipped}
            kl = k3_kl(logprobs, ref_lp)
            return per_token + cfg.kl_coef * kl, {"kl": kl, "clip_frac": clipped}

        return self._run_mini_batches(samples, grpo_loss)

    def sft_step(self, samples: Sequence[SFTSample]) -> dict[str, float]:
        """Supervised steps on (prompt, response) pairs: token-mean NLL of the response tokens, one optimizer
        step per mini-batch."""
        if not samples:
            raise ValueError("sft_step got an empty batch")
        self.engine.train()
        return self._run_mini_batches(samples, lambda micro, logprobs, mask: (-logprobs, {}))

    def _run_mini_batches(self, samples: Sequence, micro_loss) -> dict[str, float]:
        totals: dict[str, float] = {}
        grad_norms = []
        starts = range(0, len(samples), self.config.mini_batch_size)
        for start in starts:
            sums, grad_norm = self._update(samples[start : start + self.config.mini_batch_size], micro_loss)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            if grad_norm is not None:
                grad_norms.append(grad_norm)
        tokens = max(totals.pop("tokens"), 1.0)
        return {
            **{key: value / tokens for key, value in totals.items()},
            "grad_norm": max(grad_norms) if grad_norms else 0.0,
            "train_tokens": tokens,
            "optimizer_steps": float(len(starts)),
            "learning_rate": float(self.engine.get_lr()[0]),
        }

    def export_adapter(self, path: str) -> str:
        """Write the adapter in PEFT format to `path`, atomically (a reader never sees a half adapter)."""
        if self.config.finetune != "lora":
            raise ValueError("export_adapter needs learner.finetune: lora; use export_model")
        return str(replace_directory(Path(path), lambda p: self.engine.module.save_pretrained(str(p))))

    def export_model(self, path: str) -> str:
        """Write a full model folder (LoRA merged into the weights) with its tokenizer, loadable by
        `from_pretrained` and by vLLM; atomically. Ends training: the adapter is merged in place."""
        from transformers import AutoTokenizer

        model = self.engine.module
        if self.config.finetune == "lora":
            model = model.merge_and_unload()

        def write(staging: Path) -> None:
            model.save_pretrained(str(staging))
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(str(staging))

        return str(replace_directory(Path(path), write))


LearnerWorker = ray.remote(GRPOLearner)
