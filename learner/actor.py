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
from learner.records import TrainSample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class GRPOLearner:
    """GRPO on a LoRA policy in a DeepSpeed engine; the reference policy is the same model, adapter off."""

    def __init__(self, model_path: str, config: LearnerConfig, *, temperature: float = 1.0, num_threads: int | None = None):
        import importlib

        import deepspeed

        # `deepspeed.comm` re-exports the torch package as `torch`, so fetch the submodule by name.
        ds_torch_comm = importlib.import_module("deepspeed.comm.torch")

        config.validate()
        self.config, self.temperature = config, temperature
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

    def _micro_batches(self, samples: Sequence[TrainSample]):
        size = self.config.micro_batch_size
        return [list(samples[i : i + size]) for i in range(0, len(samples), size)]

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One GRPO update pass over the batch: len(samples)/mini_batch_size optimizer steps."""
        if not samples:
            raise ValueError("train_step got an empty batch")
        cfg = self.config
        self.engine.train()
        with torch.no_grad():
            old = [self._logprobs(mb)[0] for mb in self._micro_batches(samples)]
            ref = [self._logprobs(mb, with_adapter=False)[0] for mb in self._micro_batches(samples)]
        policy_loss = POLICY_LOSSES[cfg.policy_loss]
        totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "tokens": 0.0}
        grad_norms = []
        micro_index = 0
        for start in range(0, len(samples), cfg.mini_batch_size):
            mini = samples[start : start + cfg.mini_batch_size]
            mini_tokens = sum(len(s.completion_ids) for s in mini)
            micros = self._micro_batches(mini)
            for i, micro in enumerate(micros):
                logprobs, mask = self._logprobs(micro)
                old_lp, ref_lp = old[micro_index], ref[micro_index]
                micro_index += 1
                adv = torch.tensor([s.advantage for s in micro], dtype=torch.float32, device=self.device)[:, None]
                per_token, clipped = policy_loss(
                    logprobs, old_lp, adv, clip_low=cfg.clip_low, clip_high=cfg.clip_high
                )
                kl = k3_kl(logprobs, ref_lp)
                per_token = per_token + cfg.kl_coef * kl
                # Token-mean over the whole mini-batch, however it is split into micro-batches.
                loss = (per_token * mask).sum() / max(mini_tokens, 1)
                boundary = i == len(micros) - 1
                self.engine.set_gradient_accumulation_boundary(boundary)
                self.engine.backward(loss, scale_wrt_gas=False)
                if boundary and self._plain_fp32:
                    grad_norms.append(self._local_grad_norm())
                self.engine.step()
                n_tok = float(mask.sum())
                totals["loss"] += float(loss.detach()) * max(mini_tokens, 1)
                totals["kl"] += float((kl.detach() * mask).sum())
                totals["clip_frac"] += float((clipped * mask).sum())
                totals["tokens"] += n_tok
            if not self._plain_fp32 and self.engine.get_global_grad_norm() is not None:
                grad_norms.append(float(self.engine.get_global_grad_norm()))
        tokens = max(totals["tokens"], 1.0)
        return {
            "loss": totals["loss"] / tokens,
            "kl": totals["kl"] / tokens,
            "clip_frac": totals["clip_frac"] / tokens,
            "grad_norm": max(grad_norms) if grad_norms else 0.0,
            "train_tokens": totals["tokens"],
            "optimizer_steps": float(len(range(0, len(samples), cfg.mini_batch_size))),
        }

    def export_adapter(self, path: str) -> str:
        """Write the adapter in PEFT format to `path`, atomically (a reader never sees a half adapter)."""
        target = Path(path)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        self.engine.module.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return str(target)


LearnerWorker = ray.remote(GRPOLearner)
