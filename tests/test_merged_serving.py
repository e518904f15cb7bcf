"""Adapters served merged into the base weights (rollout/merged.py, the CPU default): a worker samples, version
after version, exactly what a fresh worker on PEFT's `merge_and_unload` of the same adapter samples, also for an
adapter that adapts only some parts of a fused layer (q_proj and v_proj of qkv_proj) after one that adapted every
module (whose changes must not survive it); an adapter the merge would not reproduce is refused, naming why."""

from __future__ import annotations

import os
import shutil

import pytest

from rollout.records import AdapterPayload, SamplingSpec

ENGINE = dict(max_model_len=512, kv_cache_bytes=32 << 20, seed=0, dtype="float32", merge_adapters=True)
SPEC = SamplingSpec(n=4, temperature=1.0, max_tokens=24)
CONVERSATIONS = [[{"role": "user", "content": q}] for q in ("What is 12 + 30?", "Natalia sold 48 clips.")]


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(model_path: str, folder, seed: int, targets: list[str] = ALL, **options):
    """A LoRA adapter whose B is not zero (PEFT's default init would leave the model unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False, **options)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def peft_merged(model_path: str, adapter, folder):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(folder)
    for file in os.listdir(model_path):  # the tokenizer and chat template
        if not file.endswith(".safetensors") and not (folder / file).exists():
            shutil.copy(f"{model_path}/{file}", folder / file)
    return str(folder)


def sampled(ray, worker, **kwargs):
    groups = ray.get(worker.generate.remote(CONVERSATIONS, SPEC, seed=7, **kwargs))
    return [[(c.completion_ids, c.logprobs) for c in group] for group in groups], groups[0][0]


def test_a_merged_adapter_samples_what_peft_merge_and_unload_samples(ray_session, tiny_model, tmp_path):
    from rollout.actor import RolloutWorker

    ray = ray_session
    first = random_adapter(tiny_model, tmp_path / "adapter-1", 1)
    # Parts of both fused layers: vLLM reloads qkv_proj and gate_up_proj whole.
    second = random_adapter(tiny_model, tmp_path / "adapter-2", 2, ["q_proj", "v_proj", "up_proj"])
    start = RolloutWorker.options(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}})
    worker = start.remote(tiny_model, **ENGINE)
    base, _ = sampled(ray, worker)
    digests = []
    for version, adapter in ((1, first), (2, second)):
        payload = AdapterPayload.from_folder(version, adapter)
        digests.append(ray.get(worker.load_adapter_payload.remote(payload)))
        assert digests[-1] == payload.digest
    served, completion = sampled(ray, worker)
    assert (completion.adapter_version, completion.adapter_digest) == (2, digests[-1])
    # The base model is gone from this engine: asking for it is an error, not the adapter's samples.
    with pytest.raises(ray.exceptions.RayTaskError, match="cannot be sampled beside it"):
        sampled(ray, worker, use_adapter=False)
    ray.kill(worker)

    # Version 2 is merged into the base weights, not into version 1's.
    oracle = start.remote(peft_merged(tiny_model, second, tmp_path / "merged"), **ENGINE)
    expected, _ = sampled(ray, oracle)
    ray.kill(oracle)
    assert served == expected
    assert served != base


@pytest.mark.parametrize("options,refused", [
    ({"use_dora": True}, "use_dora=True"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern="),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save="),
])
def test_an_adapter_the_merge_would_not_reproduce_is_refused(tiny_model, tmp_path, options, refused):
    from rollout.merged import BaseWeights, merge_refusal

    adapter = random_adapter(tiny_model, tmp_path / "adapter", 0, ["q_proj", "v_proj"], **options)
    assert refused in merge_refusal(adapter)
    with pytest.raises(ValueError, match="rollout.adapter_serving=lora"):
        BaseWeights(tiny_model, {}).merged(adapter)
    assert merge_refusal(random_adapter(tiny_model, tmp_path / "plain", 0, ["q_proj", "v_proj"])) is None
