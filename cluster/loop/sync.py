"""The synchronous schedule: one step after another, each sampling under the adapter the previous one pushed."""

from __future__ import annotations

from contextlib import nullcontext

from cluster.loop.step import StepParts, StepResult, prompt_batch, run_step
from cluster.tasks.data import Problem


class Synchronous:
    """Steps in order: rollout -> score -> credit -> train -> push, nothing ahead."""

    def __init__(self, parts: StepParts, problems: list[Problem], first: int, **_ahead):
        """Built as overlap.Overlapped is (train.schedule_for); where the run starts, its last step and the rollouts
        a checkpoint saved ahead (`_ahead`) do not matter here: each step samples its own batch when it runs."""
        self.parts, self.problems = parts, problems

    def step(self, step: int, version: int) -> StepResult:
        r = self.parts.config.rollout
        return run_step(self.parts, prompt_batch(self.problems, r.prompts_per_step, self.parts.config.data.shuffle_seed,
                                                 step - 1), step)

    def quiet(self):
        """Evaluation and checkpoints run between steps: nothing is in flight then."""
        return nullcontext()

    def pending(self) -> dict:
        """The rollouts made ahead of their step, for a checkpoint: none."""
        return {}

    def close(self) -> None:
        pass
