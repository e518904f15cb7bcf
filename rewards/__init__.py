"""Rewards: answer extraction and grading, format rewards, MOTIF future accuracy."""

from rewards.format import extract_progress, final_round_format, intermediate_round_format
from rewards.math_answers import extract_answer, grade, gsm8k_gold
from rewards.motif import future_accuracy

__all__ = [
    "extract_answer",
    "extract_progress",
    "final_round_format",
    "future_accuracy",
    "grade",
    "gsm8k_gold",
    "intermediate_round_format",
]
