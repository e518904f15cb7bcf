"""An adapter served merged into the base weights: each pushed LoRA version becomes the base model's weights plus
B @ A * scaling for the modules it adapts, reloaded in place into the engine (vLLM's `reload_weights`). On CPU
vLLM's LoRA path runs several small kernels per layer and token, and sampling under an adapter took twice as long
as sampling the base model (0.8-1.2 s against 0.4-0.6 s for 32 samples of 120 tokens on the demo's model); merged,
it costs what the base model costs. The price: one copy of the adapted modules' base weights in the worker, and
the base model cannot be sampled beside the adapter (rollout.continuation_policy=frozen_base)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

# base_model.model.<module>.lora_A[.<adapter name>].weight, as PEFT saves a LoRA matrix.
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])(\.[^.]+)?\.weight$")
# What a plain LoRA adapter leaves at these values; anything else trains more than B @ A, which the merge would
# drop or get wrong.
PLAIN = {"peft_type": "LORA", "use_dora": False, "fan_in_fan_out": False, "lora_bias": False,
         "modules_to_save": None, "bias": "none", "rank_pattern": {}, "alpha_pattern": {},
         "trainable_token_indices": None}


def merge_refusal(adapter: Path) -> str | None:
    """Why the PEFT adapter in `adapter` cannot be served merged (rollout.adapter_serving=lora can serve it), or
    None."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    for key, plain in PLAIN.items():
        if (config.get(key) or plain) != plain:
            return f"{key}={config[key]!r}, which merging into the base weights does not reproduce"
    from safetensors import safe_open

    if not (adapter / "adapter_model.safetensors").exists():
        return "no adapter_model.safetensors (merging reads safetensors weights only)"
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        other = next((key for key in f.keys() if not LORA_KEY.match(key)), None)
    if other is not None:
        return f"holds {other}, which is not a LoRA A or B matrix of a linear layer"
    return None


class BaseWeights:
    """The base weights of the modules an adapter adapts, read from the model's safetensors on first use.

    `fused`: vLLM's packed_modules_mapping (e.g. qkv_proj: q_proj, k_proj, v_proj). vLLM reloads a fused layer
    whole, so a module's siblings are sent with it even where the adapter leaves them unchanged: a layer
    reloaded from some of its parts would hold uninitialised rows in the others."""

    def __init__(self, model: str, fused: dict[str, list[str]]):
        self.model = model
        self.siblings = {part: parts for parts in fused.values() for part in parts}
        self._weights: dict = {}
        self._changed: set[str] = set()  # modules whose served weights are not the base's

    def merged(self, adapter: Path) -> Iterator[tuple[str, object]]:
        """(checkpoint name, weight) for every module the PEFT adapter in `adapter` adapts, base + B @ A * scaling
        as PEFT's merge computes it (LoraLayer.get_delta_weight, then an add); the base weight of each fused
        sibling and of each module the previous version adapted and this one does not. For a float32 model the
        engine then holds the weights `merge_and_unload` writes."""
        from safetensors.torch import load_file

        if (refusal := merge_refusal(adapter)) is not None:
            raise ValueError(f"{adapter}: {refusal}; serve it with rollout.adapter_serving=lora")
        config = json.loads((adapter / "adapter_config.json").read_text())
        rank, alpha = config["r"], config["lora_alpha"]
        scaling = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
        matrices: dict[str, dict[str, object]] = {}
        for key, tensor in load_file(str(adapter / "adapter_model.safetensors")).items():
            match = LORA_KEY.match(key)
            matrices.setdefault(match["module"], {})[match["matrix"]] = tensor
        # The modules the previous version changed return to the base weights where this one leaves them.
        modules = set(matrices) | self._changed
        for module in list(modules):
            parent, _, name = module.rpartition(".")
            modules |= {f"{parent}.{sibling}" for sibling in self.siblings.get(name, ())}
        self._load(sorted(f"{m}.weight" for m in modules), adapted={f"{m}.weight" for m in matrices})
        # Everything that can fail has been checked: the engine consumes the weights as it reloads them.
        self._changed = set(matrices)
        return self._merge(sorted(modules), matrices, scaling)

    def _merge(self, modules: list[str], matrices: dict, scaling: float) -> Iterator[tuple[str, object]]:
        for module in modules:
            # In float32, as the CPU learner holds them; the engine casts the result to its own dtype.
            base = self._weights[f"{module}.weight"].float()
            if module in matrices:
                a, b = matrices[module]["A"].float(), matrices[module]["B"].float()
                base = base + (b @ a) * scaling
            yield f"{module}.weight", base

    def _load(self, names: list[str], adapted: set[str]) -> None:
        from safetensors import safe_open

        missing = [n for n in names if n not in self._weights]
        if not missing:
            return
        for file in sorted(model_folder(self.model).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for name in set(missing) & set(f.keys()):
                    self._weights[name] = f.get_tensor(name)
        absent = [n for n in missing if n not in self._weights]
        if absent:
            what = "adapts" if absent[0] in adapted else "needs the fused sibling"
            raise ValueError(f"the adapter {what} {absent[0]}, which the safetensors of the model {self.model} do not "
                             "hold (an adapter of another base model, tied weights, or weights not in safetensors?)")


def model_folder(model: str) -> Path:
    """The local folder of `model` (a folder, or a hub id in the local cache)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.safetensors", "*.safetensors.index.json"]))
