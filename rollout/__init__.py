"""Rollout: the vLLM engine wrapper, multi-round protocols and the Ray rollout actor."""
