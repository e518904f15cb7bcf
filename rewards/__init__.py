"""Rewards: bounded answer grading, format rewards, MOTIF future accuracy."""

from rewards.format import extract_progress, final_round_format, intermediate_round_format
from rewards.grading import GradeResult, Grader, grade, grade_batch
from rewards.math_answers import extract_answer, gsm8k_gold
from rewards.motif import future_accuracies, future_accuracy

__all__ = [
    "GradeResult",
    "Grader",
    "extract_answer",
    "extract_progress",
    "final_round_format",
    "future_accuracies",
    "future_accuracy",
    "grade",
    "grade_batch",
    "gsm8k_gold",
    "intermediate_round_format",
]
