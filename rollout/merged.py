"""An adapter served merged into the base weights: each pushed LoRA version becomes the base model's weights plus
B @ A * scaling for the modules it adapts, reloaded in place into the engine (vLLM's `reload_weights`). On CPU
vLLM's LoRA path runs several small kernels per layer and token, and sampling under an adapter took twice as long
as sampling the base model (0.8-1.2 s against 0.4-0.6 s for 32 samples of 120 tokens on the demo's model); merged,
it costs what the base model costs. The price: one copy of the adapted modules' base weights in the worker, and
the base model cannot be sampled beside the adapter (rollout.continuation_policy=frozen_base)."""

from __future__ import annotations

import json
from pathlib import Path

PEFT_PREFIX = "base_model.model."
# A PEFT LoRA adapter this merge reproduces exactly: plain A and B matrices, nothing else trained.
UNSUPPORTED = {"use_dora": True, "fan_in_fan_out": True}


def model_folder(model: str) -> Path:
    """The local folder of `model` (a folder, or a hub id in the local cache)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.safetensors", "*.safetensors.index.json"]))


class BaseWeights:
    """The base weights of the modules an adapter adapts, read from the model's safetensors on first use."""

    def __init__(self, model: str):
        self.model = model
        self._weights: dict = {}

    def merged(self, adapter: Path) -> list[tuple[str, object]]:
        """(checkpoint name, base + B @ A * scaling) for every module the PEFT adapter in `adapter` adapts, as
        PEFT's merge computes it (LoraLayer.get_delta_weight, then an add), so the engine serves exactly the
        weights `merge_and_unload` writes for the model in float32."""
        from safetensors.torch import load_file

        config = json.loads((adapter / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA":
            raise ValueError(f"{adapter}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
        for key, value in UNSUPPORTED.items():
            if config.get(key) == value:
                raise ValueError(f"{adapter}: {key}={value} is not merged here; use rollout.adapter_serving=lora")
        if config.get("modules_to_save") or config.get("bias", "none") != "none":
            raise ValueError(f"{adapter}: trains modules_to_save or biases; use rollout.adapter_serving=lora")
        rank, alpha = config["r"], config["lora_alpha"]
        scaling = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        modules = sorted({key.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0] for key in tensors if ".lora_" in key})
        self._load([f"{module}.weight" for module in modules])
        merged = []
        for module in modules:
            a, b = tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"]
            # In float32, as the CPU learner holds them; the engine casts the result to its own dtype.
            base = self._weights[f"{module}.weight"].float()
            merged.append((f"{module}.weight", base + (b.float() @ a.float()) * scaling))
        return merged

    def _load(self, names: list[str]) -> None:
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
            raise ValueError(f"the adapter adapts {absent[0]}, which the model {self.model} does not have "
                             "(an adapter of another base model?)")
