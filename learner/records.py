"""Records the learner accepts from the driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSample:
    """One completion to train on, with its group-normalised advantage."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    temperature: float | None = None  # what it was sampled at (None: the learner's, round 1's)
    # The episode it is a turn of (None: a sample of its own): a mini-batch holds whole episodes.
    episode: int | None = None
    # vLLM's logprob of each completion token at the temperature it was sampled at (None: not sampled by vLLM,
    # e.g. a DPO pair): rollout/logprob_diff and truncated importance sampling (learner.tis_cap) read them.
    behaviour_logprobs: list[float] | None = None
    truncated: bool = False  # it hit the token limit: learner.mask_truncated leaves it out of the loss


@dataclass(frozen=True)
class SFTSample:
    """A prompt and the response to imitate; the loss covers the response tokens only."""

    prompt_ids: list[int]
    completion_ids: list[int]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with the completion preferred and the one rejected (`motif dpo`)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def samples(self, episode: int) -> list[TrainSample]:
        """The pair as the learner trains it: one episode of two samples, chosen then rejected (the order `dpo`
        reads; the planner keeps it). `dpo` reads no advantage."""
        return [TrainSample(self.prompt_ids, self.chosen_ids, 0.0, episode=episode),
                TrainSample(self.prompt_ids, self.rejected_ids, 0.0, episode=episode)]
