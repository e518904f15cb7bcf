"""The rollout engine's arguments per platform, checked by vLLM's own EngineArgs; sleep and wake around a
colocated learner, recorded on a fake engine (vLLM's sleep mode is CUDA only)."""

from __future__ import annotations

import pytest

from cluster.config import load_config
from cluster.workers import engine_settings
from rollout.engine import VLLMEngine, engine_args

SMOKE = "tests/configs/smoke.yaml"


def args_for(model: str, *overrides: str) -> dict:
    config = load_config(SMOKE, list(overrides))
    return engine_args(model, cuda=config.rollout.num_gpus > 0, **engine_settings(config))


def test_cpu_engine_sizes_its_kv_cache_in_bytes_and_passes_vllm_validation(tiny_model):
    from vllm.engine.arg_utils import EngineArgs

    args = args_for(tiny_model)
    assert args["kv_cache_memory_bytes"] == 64 << 20 and args["enforce_eager"] is True
    assert "gpu_memory_utilization" not in args and "enable_sleep_mode" not in args
    config = EngineArgs(**args).create_engine_config()
    assert config.cache_config.kv_cache_memory_bytes == 64 << 20
    assert config.cache_config.enable_prefix_caching
    # On CPU adapters are merged into the weights (rollout/merged.py): no LoRA layers; vLLM's LoRA on request.
    assert args["enable_lora"] is False and config.lora_config is None
    lora = EngineArgs(**args_for(tiny_model, "rollout.adapter_serving=lora")).create_engine_config()
    assert lora.lora_config.max_loras == 2 and lora.lora_config.max_lora_rank == 8
    assert args_for(tiny_model, "rollout.continuation_policy=frozen_base")["enable_lora"] is True
    assert config.model_config.logprobs_mode == "processed_logprobs"  # after temperature, as the learner's
    assert "max_num_seqs" not in args  # vLLM's own default for the platform
    bounded = EngineArgs(**args_for(tiny_model, "rollout.max_num_seqs=8")).create_engine_config()
    assert bounded.scheduler_config.max_num_seqs == 8


def test_gpu_engine_takes_a_memory_share_and_cuda_graphs(tiny_model):
    from vllm.engine.arg_utils import EngineArgs

    args = args_for(tiny_model, "rollout.num_gpus=1", "cluster.learner_num_gpus=1")
    assert args["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in args
    assert args["enforce_eager"] is False and args["enable_sleep_mode"] is False and args["enable_lora"] is True
    config = EngineArgs(**args).create_engine_config()  # the platform here is the CPU: only the names and values
    assert config.cache_config.gpu_memory_utilization == 0.9
    assert config.cache_config.kv_cache_memory_bytes is None

    explicit = args_for(tiny_model, "rollout.num_gpus=1", "rollout.kv_cache_mb=2048", "rollout.enforce_eager=true")
    assert explicit["kv_cache_memory_bytes"] == 2048 << 20 and explicit["enforce_eager"] is True


def test_colocated_gpu_engine_leaves_the_learner_its_share_and_sleeps(tiny_model):
    from vllm.engine.arg_utils import EngineArgs

    args = args_for(tiny_model, "rollout.num_gpus=0.5", "cluster.learner_num_gpus=0.5", "cluster.placement=colocate")
    assert args["gpu_memory_utilization"] == 0.5 and args["enable_sleep_mode"] is True
    # Every setting is accepted; only sleep mode itself needs CUDA.
    with pytest.raises(Exception, match="Sleep mode is not supported on current platform"):
        EngineArgs(**args).create_engine_config()
    EngineArgs(**{**args, "enable_sleep_mode": False}).create_engine_config()


def test_shipped_paper_config_loads_and_its_engine_arguments_validate(tiny_model):
    from vllm.engine.arg_utils import EngineArgs

    config = load_config("motif-qwen2.5-3b-gsm8k")
    r = config.rollout
    assert (config.model.path, config.data.path, r.samples_per_prompt, r.continuations, r.rounds) == \
        ("Qwen/Qwen2.5-3B-Instruct", "gsm8k", 8, 4, 3)
    assert r.continuation_temperature == 0.8 and config.learner.lora_rank == 64 and config.eval.path == "math500"
    args = engine_args(tiny_model, cuda=True, **{**engine_settings(config), "max_model_len": 512, "dtype": "float32"})
    assert args["gpu_memory_utilization"] == 0.85 and args["max_lora_rank"] == 64
    EngineArgs(**args)


class RecordingLLM:
    """Records what the engine wrapper asks of vLLM."""

    def __init__(self):
        self.calls = []
        self.llm_engine = self

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))

    def add_lora(self, request):
        self.calls.append(("add_lora", request.lora_int_id))

    def remove_lora(self, lora_id):
        self.calls.append(("remove_lora", lora_id))


def recording_engine(sleep_mode: bool) -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm, engine.sleep_mode, engine.asleep = RecordingLLM(), sleep_mode, False
    engine.adapter_version, engine.adapter_digest, engine._lora, engine.base_weights = 0, "", None, None
    return engine


def test_engine_sleeps_while_the_learner_trains_and_wakes_before_it_serves(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    engine = recording_engine(sleep_mode=True)
    engine.sleep()
    engine.sleep()  # already asleep: nothing more to free
    engine.load_adapter(tmp_path, 1)  # the push after the update wakes it first
    engine.sleep()
    engine.load_adapter(tmp_path, 2)
    assert engine.llm.calls == [("sleep", 1), ("wake_up",), ("add_lora", 1),
                                ("sleep", 1), ("wake_up",), ("add_lora", 2), ("remove_lora", 1)]

    cpu = recording_engine(sleep_mode=False)
    cpu.sleep()
    cpu.load_adapter(tmp_path, 1)
    assert cpu.llm.calls == [("add_lora", 1)]


def test_only_named_variables_travel_to_the_actors():
    from cluster.config import RunConfig
    from cluster.workers import forwarded_env

    environ = {"HF_TOKEN": "secret", "VLLM_API_KEY": "secret", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "4",
               "HOME": "/root"}
    assert forwarded_env(RunConfig().cluster.forward_env, environ) == {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "4"}
    config = load_config(SMOKE, ["cluster.forward_env=[HF_TOKEN, HF_HUB_OFFLINE]"])
    assert forwarded_env(config.cluster.forward_env, environ) == {"HF_TOKEN": "secret", "HF_HUB_OFFLINE": "1"}


def test_a_submitted_job_carries_only_the_allowed_variables(tmp_path):
    """`ray-node.sh submit` builds the job's runtime env from the same allow-list (a recording `ray` on PATH
    stands in for the cluster: what is checked is the script's own argument)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {tmp_path / 'calls'}\necho succeeded\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.path.dirname(sys.executable)}:/usr/bin:/bin", "RAY_AUTH_TOKEN": "t",
           "PYTHONPATH": str(REPO), "HF_TOKEN": "hf_secret", "VLLM_API_KEY": "secret", "HF_HUB_OFFLINE": "1",
           "HOME": str(tmp_path)}

    def submitted_env(**extra) -> dict:
        (tmp_path / "calls").unlink(missing_ok=True)
        done = subprocess.run([f"{REPO}/cluster/launch/ray-node.sh", "submit", "http://127.0.0.1:8265", "--",
                               "motif", "train"], env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        calls = (tmp_path / "calls").read_text().splitlines()
        return json.loads(calls[calls.index("--runtime-env-json") + 1] if "--runtime-env-json" in calls else
                          next(c.split("=", 1)[1] for c in calls if c.startswith("--runtime-env-json=")))["env_vars"]

    assert submitted_env() == {"HF_HUB_OFFLINE": "1"}
    assert submitted_env(MOTIF_FORWARD_ENV="HF_TOKEN") == {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret"}
