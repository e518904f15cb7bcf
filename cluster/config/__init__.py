"""Typed run configuration, validated before anything starts: schema.py (one dataclass per section, each
validating its own keys; the fields a resume must keep are marked there), rules.py (the rules across
sections), load.py (YAML, `section.key=value` overrides, shipped configs; every error one line)."""

from cluster.config.errors import BadInput, ConfigError
from cluster.config.load import (CONFIGS, apply_override, load_config, read_as_now, resolve_config, shipped_configs,
                                 to_dict, without_new_unset)
from cluster.config.schema import (PLACEMENT_STRATEGIES, CheckpointConfig, ClusterConfig, DataConfig, DPODataConfig,
                                   DPORunConfig, EvalConfig, ModelConfig, RewardConfig, RolloutConfig, RunConfig,
                                   SFTDataConfig, SFTRunConfig, ToyConfig, WarmStartConfig, resume_field_names)

__all__ = [
    "BadInput", "CONFIGS", "CheckpointConfig", "ClusterConfig", "ConfigError", "DPODataConfig", "DPORunConfig",
    "DataConfig", "EvalConfig",
    "ModelConfig", "PLACEMENT_STRATEGIES", "RewardConfig", "RolloutConfig", "RunConfig", "SFTDataConfig",
    "SFTRunConfig", "ToyConfig", "WarmStartConfig", "apply_override", "load_config", "read_as_now", "resolve_config",
    "resume_field_names", "shipped_configs", "to_dict", "without_new_unset",
]
