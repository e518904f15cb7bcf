"""The adapter push is real and exact: vLLM under the pushed version == HF + PEFT with the same adapter."""

from __future__ import annotations

import pytest

from rollout.common import write_files
from learner.config import LearnerConfig
from learner.records import TrainSample
from rollout.records import AdapterPayload, SamplingSpec

QUESTIONS = ["What is 12 + 30?", "Natalia sold 48 clips in April and half as many in May.", "How many apples left?"]
GREEDY = SamplingSpec(n=1, temperature=0.0, max_tokens=16)


def conversations():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def hf_peft_greedy(model_path: str, adapter_path: str, prompt_ids: list[list[int]], max_new_tokens: int):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), adapter_path)
    model.eval()
    outputs = []
    with torch.no_grad():
        for ids in prompt_ids:
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
            outputs.append(out[0, len(ids):].tolist())
    return outputs


@pytest.fixture(scope="module")
def learner(ray_session, tiny_model):
    from learner.actor import LearnerWorker

    config = LearnerConfig(lora_rank=8, lora_alpha=16, learning_rate=0.05, mini_batch_size=6, micro_batch_size=3)
    return LearnerWorker.options(num_cpus=1).remote(tiny_model, config, temperature=1.0, num_threads=2)


def test_push_through_the_object_store_matches_hf_peft(ray_session, rollout_worker, rollout_pool, learner, tiny_model, tmp_path):
    """The adapter travels as bytes: the learner writes nothing the worker could read (its export folder is a
    temporary one, gone when the payload is made), and the worker serves exactly the pushed weights."""
    ray = ray_session
    base = [c[0] for c in ray.get(rollout_worker.generate.remote(conversations(), GREEDY))]
    assert all(c.adapter_version == 0 and c.adapter_digest == "" for c in base)

    sampled = ray.get(rollout_worker.generate.remote(conversations(), SamplingSpec(n=2, temperature=1.0, max_tokens=16)))
    batch = [
        TrainSample(c.prompt_ids, c.completion_ids, advantage=1.0 if j == 0 else -1.0)
        for group in sampled for j, c in enumerate(group)
    ]
    metrics = ray.get(learner.train_step.remote(batch))
    assert metrics["grad_norm"] > 0 and metrics["optimizer_steps"] == 1

    version = ray.get(rollout_worker.adapter_version.remote()) + 1
    digest, payload = learner.adapter_payload.options(num_returns=2).remote(version)
    digest = ray.get(digest)
    rollout_pool.push(payload, digest, version)
    pushed = [c[0] for c in ray.get(rollout_worker.generate.remote(conversations(), GREEDY))]

    assert all(c.adapter_version == version and c.adapter_digest == digest for c in pushed)
    assert [c.completion_ids for c in pushed] != [c.completion_ids for c in base], "the update changed nothing"
    # The oracle loads the same bytes into HF + PEFT from a folder of the test's own.
    files = ray.get(payload)
    assert files.digest == digest and "adapter_config.json" in files.files
    write_files(tmp_path / "adapter", files.files)
    reference = hf_peft_greedy(tiny_model, str(tmp_path / "adapter"), [c.prompt_ids for c in pushed], GREEDY.max_tokens)
    assert [c.completion_ids for c in pushed] == reference

    # The base model stays reachable with the adapter off (continuation_policy: frozen_base).
    frozen = [c[0] for c in ray.get(rollout_worker.generate.remote(conversations(), GREEDY, False))]
    assert [c.completion_ids for c in frozen] == [c.completion_ids for c in base]
    assert all(c.adapter_version == 0 for c in frozen)


def test_push_rejects_stale_versions_bad_payloads_and_wrong_digests(ray_session, rollout_worker, rollout_pool):
    ray = ray_session
    current = ray.get(rollout_worker.adapter_version.remote())
    with pytest.raises(ray.exceptions.RayTaskError, match="no PEFT adapter"):
        rollout_pool.push(AdapterPayload(current + 100, {"README.md": b"not an adapter"}), "x", current + 100)
    assert ray.get(rollout_worker.adapter_version.remote()) == current
    if current:
        # Re-sending what is served under a version that does not increase is refused by the engine.
        with pytest.raises(ray.exceptions.RayTaskError, match="must increase"):
            rollout_pool.push(rollout_pool.payload, rollout_pool.digest, current)
        # A worker that reports another digest than the one sent fails the push loudly.
        with pytest.raises(RuntimeError, match="digest"):
            rollout_pool.push(AdapterPayload(current + 1, ray.get(rollout_pool.payload).files), "0" * 64, current + 1)
    assert ray.get(rollout_worker.pid.remote()) > 0
