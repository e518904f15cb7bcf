"""Rewards: bounded answer grading, format rewards, MOTIF future accuracy, the reward registry, reward
models (RLMT) and motivation text (MeRF)."""

from rewards.format import FORMATS, extract_progress, strip_thinking
from rewards.grading import GradeResult, Grader, grade, grade_batch
from rewards.math_answers import extract_answer, gsm8k_gold
from rewards.motif import future_accuracies, future_accuracy
from rewards.motivation import motivation_text
from rewards.registry import (REWARDS, Reward, RewardSample, RewardTerm, Scored, build_rewards, register_reward,
                              score_samples)

__all__ = [
    "FORMATS",
    "GradeResult",
    "Grader",
    "REWARDS",
    "Reward",
    "RewardSample",
    "RewardTerm",
    "Scored",
    "build_rewards",
    "extract_answer",
    "extract_progress",
    "future_accuracies",
    "future_accuracy",
    "grade",
    "grade_batch",
    "gsm8k_gold",
    "motivation_text",
    "register_reward",
    "score_samples",
    "strip_thinking",
]
