"""Ray actor that trains the LoRA policy with GRPO inside DeepSpeed and exports the adapter."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import ray
import torch

from learner.config import LearnerConfig
from learner.deepspeed_config import deepspeed_config, lr_schedule
from rollout.common import replace_directory, write_files
from learner.batching import episodes_of, plan_batch
from learner.objectives import OBJECTIVES, reads_whole_episodes
from learner.objectives.aggregation import MiniBatchSize
from learner.objectives.kl import kl_estimate
from learner.policy import load_policy, pad_batch, token_logprobs
from learner.records import PreferencePair, SFTSample, TrainSample
from learner.rendezvous import interface_of, rendezvous_address, tcp_store
from rollout.records import AdapterPayload


def canonical_adapter_config(path: Path) -> None:
    """PEFT writes target_modules in set order, which changes from process to process; sorted, the same weights
    always make the same files, and so the same digest."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def collective_interfaces(master: str, node_address: str | None) -> dict[str, str]:
    """The network interface gloo and NCCL connect the ranks over. One machine (a file:// rendezvous): loopback,
    for both (NCCL skips `lo` unless named, and would bind an external interface). Across machines: the
    interface of this node's address, the one the peers reach. NCCL's "=" means that name, not a prefix."""
    interface = "lo" if master.startswith("file://") else interface_of(node_address)
    if interface is None:
        return {}
    return {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": f"={interface}"}


class GRPOLearner:
    """The one training stack: GRPO and DPO (LoRA; the reference policy is the same model, adapter off) and SFT
    (LoRA or full) steps in a DeepSpeed engine, and the exports that vLLM loads.

    One instance is one data-parallel rank: `world_size` instances that share `master` ("host:port", or a
    file:// rendezvous on one machine) form one DeepSpeed group (gloo on CPU, NCCL on GPU); `LearnerGroup`
    feeds them.
    """

    def __init__(self, model_path: str, config: LearnerConfig, *, temperature: float = 1.0,
                 num_threads: int | None = None, rank: int = 0, world_size: int = 1, master: str | None = None,
                 use_cuda: bool | None = None):
        import importlib

        import deepspeed

        # `deepspeed.comm` re-exports the torch package as `torch`, so fetch the submodule by name.
        ds_torch_comm = importlib.import_module("deepspeed.comm.torch")

        config.validate()
        self.config, self.temperature, self.model_path = config, temperature, model_path
        self.rank, self.world_size = rank, world_size
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(config.seed)
        cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
        if cuda and not torch.cuda.is_available():
            raise RuntimeError(f"learner rank {rank}: cluster.learner_num_gpus > 0 but no CUDA device is visible; "
                               "set it to 0 to train on CPU")
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        if master is None and world_size == 1:
            master = rendezvous_address("127.0.0.1")
        os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(world_size))
        if not cuda:
            # The shared-memory allreduce kernel costs a ~100 s JIT build on first use; gloo does the
            # collectives without it.
            ds_torch_comm.build_shm_op = lambda: None
        backend = "nccl" if cuda else "gloo"
        for name, value in collective_interfaces(master, None if master.startswith("file://") else
                                                 ray.util.get_node_ip_address()).items():
            os.environ.setdefault(name, value)
        if master.startswith("file://"):
            deepspeed.init_distributed(backend, auto_mpi_discovery=False, init_method=master, rank=rank,
                                       world_size=world_size)
        else:
            # The group is made here around a store that listens on the rendezvous address only; DeepSpeed
            # then wraps the existing group. Its timeout and device binding are DeepSpeed's own choices (no
            # device_id for a single rank: DeepSpeed's fix for an eager NCCL init failing on one GPU).
            from deepspeed.constants import default_pg_timeout

            torch.distributed.init_process_group(
                backend, store=tcp_store(master, rank, world_size, default_pg_timeout.total_seconds()), rank=rank,
                world_size=world_size, timeout=default_pg_timeout,
                **({"device_id": self.device} if cuda and world_size > 1 else {}))
            deepspeed.init_distributed(backend, auto_mpi_discovery=False)

        model = load_policy(model_path, config, dtype=torch.bfloat16 if cuda else torch.float32)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        temperatures = {getattr(s, "temperature", None) or self.temperature for s in samples}
        # One number where every sample was drawn at the learner's temperature (round 1): the same arithmetic
        # as before per-sample temperatures existed; a column only where continuation rounds are trained too.
        temperature = self.temperature if temperatures == {self.temperature} else torch.tensor(
            [getattr(s, "temperature", None) or self.temperature for s in samples])
        chunking = {"chunk_tokens": self.config.logprob_chunk_tokens,
                    "recompute": self.config.logprob_recompute and self.config.zero_stage != 3,
                    "group_chunks": self._group_max if self.config.zero_stage == 3 and self.world_size > 1 else None}
        if with_adapter:
            return token_logprobs(self.engine, ids, attention, temperature, **chunking), mask
        with self.engine.module.disable_adapter():
            return token_logprobs(self.engine.module, ids, attention, temperature, **chunking), mask

    def _all_sampled(self, samples: Sequence) -> bool:
        """Whether every sample of the batch, on every rank, carries vLLM's logprobs; a rank without samples
        agrees, so that all reduce the same metrics."""
        lacking = int(any(getattr(s, "behaviour_logprobs", None) is None for s in samples))
        return not (self._group_max(lacking) if self.world_size > 1 else lacking)

    def _group_max(self, value: int) -> int:
        import torch.distributed as dist

        value = torch.tensor([value], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)

    def _idle_logprobs(self, *, with_adapter: bool = True) -> torch.Tensor:
        """A one-token pass: a rank with no samples in a micro-batch still joins its collectives (ZeRO-3 gathers
        the partitioned weights in every forward, and backward)."""
        return self._logprobs([TrainSample([self.pad_id], [self.pad_id], 0.0)], with_adapter=with_adapter)[0]

    def _plan(self, samples: Sequence, whole_episodes: bool = False) -> list:
        """One rank alone: the batch as (micro-batches of indices, token count) per mini-batch."""
        _, (plan,) = plan_batch(samples, 1, self.config.mini_batch_size, self.config.micro_batch_size,
                                whole_episodes=whole_episodes)
        return plan

    def _update(self, samples: list, micros: list[list[int]], size: MiniBatchSize, micro_loss,
                metric_keys: tuple[str, ...]) -> tuple[dict[str, float], float | None]:
        """One optimizer step on this rank's share of a mini-batch, accumulated over its micro-batches (lists of
        indices into `samples`).

        `micro_loss(indices, logprobs, mask, size)` gives the micro-batch's share of the mini-batch loss
        and its metrics' token sums. DeepSpeed averages gradients over ranks, so each rank's share is scaled by
        the world size. An empty micro-batch (padding, so that every rank makes the same calls) contributes
        nothing. Returns the statistics' token sums on this rank, every one of `metric_keys` included, and the
        pre-clip gradient norm.
        """
        mini_tokens = max(size.tokens, 1)
        sums: dict[str, float] = {"loss": 0.0, "tokens": 0.0, **{key: 0.0 for key in metric_keys}}
        grad_norm = None
        for i, micro in enumerate(micros):
            boundary = i == len(micros) - 1
            self.engine.set_gradient_accumulation_boundary(boundary)
            if micro:
                logprobs, mask = self._logprobs([samples[j] for j in micro])
                loss, stats = micro_loss(micro, logprobs, mask, size)
                self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                sums["loss"] += float(loss.detach()) * mini_tokens
                sums["tokens"] += float(mask.sum())
                for key, value in stats.items():
                    sums[key] += float(value.detach())
            else:
                self.engine.backward(self._idle_logprobs().sum() * 0.0, scale_wrt_gas=False)
            if boundary and self._plain_fp32:
                grad_norm = self._local_grad_norm()
            self.engine.step()
        if not self._plain_fp32 and self.engine.get_global_grad_norm() is not None:
            grad_norm = float(self.engine.get_global_grad_norm())
        return sums, grad_norm

    def _sample_logprobs(self, samples: Sequence, plan, *, with_adapter: bool) -> dict[int, torch.Tensor]:
        """Completion-token logprobs of each sample (by its index in `samples`), in eval mode (no dropout), over
        the plan's micro-batches: the same passes on every rank, an empty micro-batch an idle one."""
        self.engine.eval()
        out: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for micro in (micro for micros, _ in plan for micro in micros):
                if not micro:
                    self._idle_logprobs(with_adapter=with_adapter)
                    continue
                logprobs, mask = self._logprobs([samples[i] for i in micro], with_adapter=with_adapter)
                for index, row, m in zip(micro, logprobs, mask):
                    out[index] = row[m.bool()]
        self.engine.train()
        return out

    def score(self, samples: Sequence[TrainSample]) -> list[list[float]]:
        """Each completion's per-token logprobs under the current policy (at the sampling temperature)."""
        samples = list(samples)
        logprobs = self._sample_logprobs(samples, self._plan(samples), with_adapter=True)
        return [logprobs[i].tolist() for i in range(len(samples))]

    def sequence_kl(self, samples: Sequence[TrainSample], estimator: str, plan: list | None = None) -> list[float]:
        """Each completion's per-token KL estimate (`estimator`: learner.objectives.kl) between the current policy
        and the reference (the adapter disabled), at its sampling temperature, summed over its tokens in float64:
        learner.kl_in_reward_coef's penalty. In a group, `plan` gives this rank's micro-batches, as in
        `train_step`."""
        samples = list(samples)
        plan = self._plan(samples) if plan is None else plan
        policy = self._sample_logprobs(samples, plan, with_adapter=True)
        ref = self._sample_logprobs(samples, plan, with_adapter=False)
        return [float(kl_estimate(policy[i].double(), ref[i].double(), estimator).sum()) for i in range(len(samples))]

    def train_step(self, samples: Sequence[TrainSample], plan: list | None = None) -> dict[str, float]:
        """One update pass of the configured objective (`learner.policy_loss`) over the batch: one optimizer
        step per mini-batch.

        Alone, a rank splits `samples` itself. In a group, `plan` gives this rank's share of every mini-batch as
        micro-batches of indices into `samples`, with the mini-batch's token count over all ranks.
        """
        return self._step(list(samples), plan, self.config.policy_loss)

    def sft_step(self, samples: Sequence[SFTSample]) -> dict[str, float]:
        """Supervised steps on (prompt, response) pairs: the `sft` objective, one optimizer step per mini-batch."""
        return self._step(list(samples), None, "sft")

    def dpo_step(self, pairs: Sequence[PreferencePair]) -> dict[str, float]:
        """Preference steps on (prompt, chosen, rejected): the `dpo` objective against the adapter-disabled
        reference, one optimizer step per `mini_batch_size` pairs."""
        return self._step([s for k, pair in enumerate(pairs) for s in pair.samples(k)], None, "dpo")

    def _step(self, samples: list, plan: list | None, objective_name: str) -> dict[str, float]:
        cfg, objective = self.config, OBJECTIVES[objective_name]
        needs = objective.needs(cfg)
        if plan is None:
            if not samples:
                raise ValueError(f"{objective_name} step got an empty batch")
            plan = self._plan(samples, reads_whole_episodes(cfg, objective_name))
        # Each sample's episode's trained tokens: the plan keeps an episode's rows on this rank, in one mini-batch.
        episode_tokens = {i: sum(len(samples[j].completion_ids) for j in rows)
                          for rows in episodes_of(samples, range(len(samples))).values() for i in rows} \
            if "episode_tokens" in needs else None
        # Old logprobs: with one mini-batch the policy has not moved when each sample is scored, so the ratio
        # is exactly 1 and no separate pass is needed.
        old = self._sample_logprobs(samples, plan, with_adapter=True) if "old_logprobs" in needs and len(plan) > 1 else None
        ref = self._sample_logprobs(samples, plan, with_adapter=False) if "ref_logprobs" in needs else None
        # vLLM's logprobs of what a policy loss trains, where every sample has them: the train/inference mismatch
        # is measured against the old logprobs (rollout/logprob_diff), and truncated importance sampling reads them.
        behaviour = {i: torch.tensor(s.behaviour_logprobs, device=self.device) for i, s in enumerate(samples)} \
            if "old_logprobs" in needs and self._all_sampled(samples) else None
        if "behaviour_logprobs" in needs and behaviour is None:
            raise ValueError("learner.tis_cap weighs each token by vLLM's logprob of it, but a trained sample "
                             "carries none (TrainSample.behaviour_logprobs)")
        metric_keys = objective.metrics(cfg) + (("rollout/logprob_diff",) if behaviour is not None else ())
        options = objective.options(cfg)

        def by_sample(table, indices, mask):
            padded = torch.zeros_like(mask)
            for row, index in enumerate(indices):
                padded[row, mask[row].bool()] = table[index]
            return padded

        def micro_loss(indices, logprobs, mask, size):
            inputs = {}
            if "old_logprobs" in needs:
                inputs["old_logprobs"] = logprobs.detach() if old is None else by_sample(old, indices, mask)
            if "advantages" in needs:
                inputs["advantages"] = torch.tensor([samples[i].advantage for i in indices], dtype=torch.float32,
                                                    device=self.device)[:, None]
            if ref is not None:
                inputs["ref_logprobs"] = by_sample(ref, indices, mask)
            if episode_tokens is not None:
                inputs["episode_tokens"] = torch.tensor([episode_tokens[i] for i in indices], dtype=torch.float32,
                                                        device=self.device)[:, None]
            if behaviour is not None:
                vllm = by_sample(behaviour, indices, mask)
                if "behaviour_logprobs" in needs:
                    inputs["behaviour_logprobs"] = vllm
            loss, stats = objective.loss(logprobs, mask, size=size, **inputs, **options)
            if behaviour is not None:  # both at the sample's temperature; a token sum, as every metric
                stats["rollout/logprob_diff"] = ((inputs["old_logprobs"] - vllm).abs() * mask).sum()
            return loss, stats

        self.engine.train()
        totals: dict[str, float] = {}
        grad_norms = []
        for micros, size in plan:
            sums, grad_norm = self._update(samples, micros, size, micro_loss, metric_keys)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            if grad_norm is not None:
                grad_norms.append(grad_norm)
        if self.world_size > 1:
            totals = self._sum_over_ranks(totals)
        tokens = max(totals.pop("tokens"), 1.0)
        return {
            **{key: value / tokens for key, value in totals.items()},
            "grad_norm": max(grad_norms) if grad_norms else 0.0,
            "train_tokens": tokens,
            "optimizer_steps": float(len(plan)),
            "learning_rate": float(self.engine.get_lr()[0]),
        }

    def _sum_over_ranks(self, totals: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        keys = sorted(totals)
        values = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    def release_memory(self) -> None:
        """Hand the allocator's cached blocks back to the device, so that colocated engines waking next find the
        memory free (PyTorch keeps freed blocks cached for itself otherwise)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def adapter_payload(self, version: int) -> tuple[str, AdapterPayload]:
        """(digest, adapter bytes) for the object store. Under ZeRO-3 the LoRA shards are gathered first, so every
        rank must call; rank 0's payload is the real one, the others are empty."""
        import tempfile

        import deepspeed

        if self.config.finetune != "lora":
            raise ValueError("adapter_payload needs learner.finetune: lora; use export_model")
        lora = [p for p in self.engine.module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(lora, enabled=self.config.zero_stage == 3), \
                tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                self.engine.module.save_pretrained(tmp)
                canonical_adapter_config(Path(tmp) / "adapter_config.json")
            payload = AdapterPayload.from_folder(version, tmp)
        return payload.digest, payload

    def export_adapter(self, path: str) -> str:
        """Write the adapter in PEFT format to `path`, atomically (a reader never sees a half adapter)."""
        _, payload = self.adapter_payload(0)
        if self.rank == 0:
            write_files(Path(path), payload.files)
        return path

    def save_checkpoint(self, folder: str) -> None:
        """Adapter weights, optimizer and scheduler (DeepSpeed's own format, every rank its shard) and this rank's
        RNG states into `folder`. Every rank must call."""
        self.engine.save_checkpoint(folder, tag="learner", exclude_frozen_parameters=True)
        state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        torch.save(state, Path(folder) / f"rng-rank{self.rank}.pt")

    def load_checkpoint(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag="learner", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no learner checkpoint in {folder}")
        state = torch.load(Path(folder) / f"rng-rank{self.rank}.pt", weights_only=False)
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["cuda"])

    def export_model(self, path: str) -> str:
        """Write a full model folder (LoRA merged into the weights) with its tokenizer, loadable by
        `from_pretrained` and by vLLM; atomically. Ends training: the adapter is merged in place. Under ZeRO-3
        every rank must call: the weights are gathered whole (a partitioned parameter holds an empty tensor)
        and rank 0 writes them."""
        import deepspeed
        from transformers import AutoTokenizer

        model = self.engine.module
        with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=self.config.zero_stage == 3):
            if self.rank != 0:
                return path
            if self.config.finetune == "lora":
                model = model.merge_and_unload()

            def write(staging: Path) -> None:
                model.save_pretrained(str(staging))
                AutoTokenizer.from_pretrained(self.model_path).save_pretrained(str(staging))

            return str(replace_directory(Path(path), write))


LearnerWorker = ray.remote(GRPOLearner)
