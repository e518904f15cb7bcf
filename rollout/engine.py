"""The one place vLLM is touched: an in-process `LLM` serving pushed LoRA adapters (through vLLM's LoRA, or merged
into its weights: rollout/merged.py), generating plain `Completion` records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rollout.merged import BaseWeights
from rollout.records import Completion, SamplingSpec

PROMPT_TOO_LONG = "prompt_too_long"
ABORTED = "abort"  # generation did not finish: vLLM aborted it, or its worker failed every retry
# The ranks vLLM has LoRA kernels for (vllm.config.lora.MaxLoRARanks); any other max_lora_rank fails at start-up.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class EngineDead(RuntimeError):
    """The engine can generate nothing more: vLLM's engine core is gone (its EngineDeadError)."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM supports that holds an adapter of `rank`."""
    for supported in VLLM_LORA_RANKS:
        if supported >= rank:
            return supported
    raise ValueError(f"LoRA rank {rank} is above the largest rank vLLM supports ({VLLM_LORA_RANKS[-1]})")


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt ready for the assistant's turn: the one rendering that sampling and SFT
    share, so what the model is trained on is what it is prompted with."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


# Adapter versions an engine holds at once: the one it serves and the one being loaded (added before the old
# one is removed). Asynchronous training with a staleness bound will raise this.
LIVE_ADAPTERS = 2
CPU_KV_CACHE_BYTES = 64 << 20


def engine_args(
    model: str,
    *,
    cuda: bool,
    max_lora_rank: int = 16,
    max_model_len: int = 2048,
    kv_cache_bytes: int | None = None,
    gpu_memory_utilization: float = 0.9,
    enforce_eager: bool | None = None,
    enable_prefix_caching: bool = True,
    sleep_mode: bool = False,
    dtype: str = "auto",
    seed: int = 0,
    tensor_parallel_size: int = 1,
    max_num_seqs: int | None = None,
    merge_adapters: bool = False,
) -> dict:
    """vLLM's `LLM(...)` arguments for one platform; pure, so they are checked on CPU by vLLM's EngineArgs.

    GPU: the KV cache is what `gpu_memory_utilization` leaves after the weights (`kv_cache_bytes` overrides it
    only when given), CUDA graphs on unless `enforce_eager`, and sleep mode for colocated training. CPU: the
    KV cache is `kv_cache_bytes` (64 MiB by default), eager. Prefix caching pays off in MOTIF: the k
    continuations of a sample share their prompt."""
    # processed_logprobs: each sampled token's logprob after temperature (and top-p), the distribution it was
    # drawn from, which the learner compares with its own (vLLM's default, raw_logprobs, is before temperature).
    # merge_adapters: adapters are merged into the weights (rollout.merged), and vLLM's LoRA layers are left out.
    args = dict(model=model, enable_lora=not merge_adapters, max_model_len=max_model_len, dtype=dtype, seed=seed,
                tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching,
                logprobs_mode="processed_logprobs")
    if not merge_adapters:
        args.update(max_lora_rank=vllm_lora_rank(max_lora_rank), max_loras=LIVE_ADAPTERS)
    if max_num_seqs:
        args["max_num_seqs"] = max_num_seqs
    if cuda:
        args.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode,
                    enforce_eager=bool(enforce_eager))
        if kv_cache_bytes:
            args["kv_cache_memory_bytes"] = kv_cache_bytes
    else:
        args.update(kv_cache_memory_bytes=kv_cache_bytes or CPU_KV_CACHE_BYTES, enforce_eager=True)
    return args


def sampling_params(spec: SamplingSpec, max_tokens: int | None = None):
    """vLLM's SamplingParams for `spec` (`max_tokens` caps spec.max_tokens where the prompt leaves less room):
    the one place they are built, so the start-up check refuses exactly what `generate` would send."""
    from vllm import SamplingParams

    return SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                          max_tokens=spec.max_tokens if max_tokens is None else max_tokens, logprobs=0, seed=spec.seed)


def sampling_refusal(spec: SamplingSpec) -> str | None:
    """Why vLLM refuses `spec`, on one line, or None."""
    from vllm.exceptions import VLLMValidationError  # not a ValueError in vLLM >= 0.32

    try:
        sampling_params(spec)
    except (ValueError, VLLMValidationError) as error:
        return " ".join(str(error).split())
    return None


def _fused(worker) -> dict[str, list[str]]:
    """The engine's fused layers and their checkpoint parts (vLLM's packed_modules_mapping), read on its worker."""
    return dict(getattr(worker.model_runner.model, "packed_modules_mapping", {}))


class VLLMEngine:
    """A vLLM engine that serves the base model or one pushed LoRA adapter version at a time (merged: the adapter
    version only, once one is pushed)."""

    def __init__(self, model: str, *, require_cuda: bool = False, **engine_kwargs):
        """`engine_kwargs` are engine_args' settings; `require_cuda` puts the engine on the GPU."""
        if require_cuda:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("rollout.num_gpus > 0 but no CUDA device is visible to this rollout worker; "
                                   "set rollout.num_gpus=0 to run vLLM on CPU")
        else:
            # Eager on CPU, vLLM still compiles a sampler helper with inductor (each sampled token's rank, an
            # integer count): about 2 s of every engine's first request, and no sample or logprob differs without.
            import torch._dynamo

            torch._dynamo.config.disable = True
        # In-process engine: starts in seconds instead of spawning a second process inside the actor.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        args = engine_args(model, cuda=require_cuda, **engine_kwargs)
        self.llm = LLM(**args)
        self.base_weights = None if args["enable_lora"] else BaseWeights(model, self.llm.collective_rpc(_fused)[0])
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = args["max_model_len"]
        self.sleep_mode, self.asleep = args.get("enable_sleep_mode", False), False
        self.adapter_version = 0
        self.adapter_digest = ""
        self._lora = None

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights offloaded, KV cache dropped) while a colocated learner trains;
        the next load or generate wakes it. A no-op without sleep mode (CPU, or placement separate)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _awake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def load_adapter(self, path: str | Path, version: int, digest: str = "") -> None:
        """Serve the PEFT adapter at `path` as `version` from now on.

        Through vLLM's LoRA each version gets a fresh LoRA id (vLLM keeps serving the old weights if an id is
        reused with a new path), and the previous version is removed once the new one is loaded. Merged, the
        version's weights replace the previous ones in place.
        """
        from vllm.lora.request import LoRARequest

        if version <= self.adapter_version:
            raise ValueError(f"adapter version must increase: have {self.adapter_version}, got {version}")
        if not (Path(path) / "adapter_config.json").exists():
            raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) at {path}")
        self._awake()
        if self.base_weights is not None:
            weights = self.base_weights.merged(Path(path))
            vllm_logger = logging.getLogger("vllm")
            level = vllm_logger.level
            vllm_logger.setLevel(logging.ERROR)  # it warns of every weight a partial reload leaves as it was
            try:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            finally:
                vllm_logger.setLevel(level)
            self.llm.reset_prefix_cache()  # its blocks were computed under the previous weights
            self.adapter_version, self.adapter_digest = version, digest
            return
        request = LoRARequest(f"adapter-v{version}", version, str(path))
        engine = self.llm.llm_engine
        engine.add_lora(request)
        if self._lora is not None:
            engine.remove_lora(self._lora.lora_int_id)
        self._lora, self.adapter_version, self.adapter_digest = request, version, digest

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        spec: SamplingSpec,
        *,
        use_adapter: bool = True,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """`spec.n` completions per conversation, in one batched call.

        A prompt that leaves no room to generate is not sent; its completions come back empty with
        finish_reason "prompt_too_long" so callers can count it and move on.

        `seed` makes the call reproducible whatever the engine did before (a resumed run, a replacement
        worker): vLLM samples unseeded requests from torch's global generator, and the prefix cache is
        emptied so every prefill is computed the same way.
        """
        import torch
        from vllm import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        self._awake()
        if seed is not None:
            torch.manual_seed(seed)
            self.llm.reset_prefix_cache()

        prompt_ids = [chat_prompt_ids(self.tokenizer, c) for c in conversations]
        runnable = [i for i, ids in enumerate(prompt_ids) if len(ids) < self.max_model_len]
        params = [sampling_params(spec, min(spec.max_tokens, self.max_model_len - len(prompt_ids[i])))
                  for i in runnable]
        adapted = use_adapter and self.adapter_version > 0
        if not use_adapter and self.adapter_version and self.base_weights is not None:
            raise ValueError("the adapter is merged into this engine's weights (rollout.adapter_serving=merged): the "
                             "base model cannot be sampled beside it")
        lora = self._lora if adapted else None
        version = self.adapter_version if adapted else 0
        digest = self.adapter_digest if adapted else ""
        try:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompt_ids[i]) for i in runnable],
                params,
                lora_request=lora,
                use_tqdm=False,
            ) if runnable else []
        except EngineDeadError as e:  # callers tell a dead engine from a failed request without importing vLLM
            raise EngineDead(str(e)) from e

        results: list[list[Completion]] = [
            [Completion(ids, [], "", [], PROMPT_TOO_LONG, version, digest)] * spec.n for ids in prompt_ids
        ]
        for i, out in zip(runnable, outputs):
            results[i] = [
                Completion(
                    prompt_ids=prompt_ids[i],
                    completion_ids=list(o.token_ids),
                    text=o.text,
                    logprobs=[lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs or [])],
                    finish_reason=o.finish_reason or ABORTED,
                    adapter_version=version,
                    adapter_digest=digest,
                )
                for o in out.outputs
            ]
        return results
