"""The learner ranks as one: shards each mini-batch across the ranks by tokens, gathers their metrics, and
turns a dead rank into an error that says how to resume."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from learner.batching import plan_batch
from learner.records import TrainSample
from rollout.common import WorkerStartFailed, failure_cause


class LearnerDied(RuntimeError):
    """A learner rank stopped or hangs; the run cannot go on without it (its optimizer state shard is gone)."""


@ray.remote(num_cpus=0)
def rendezvous() -> str:
    """Where the ranks meet, as seen from rank 0's node (see learner.actor.rendezvous_address)."""
    from learner.rendezvous import rendezvous_address

    return rendezvous_address(ray.util.get_node_ip_address())


class LearnerGroup:
    def __init__(self, make_rank: Callable[[int], ray.actor.ActorHandle], num_ranks: int, mini_batch_size: int,
                 micro_batch_size: int, resume_hint: str, master: str = "", call_timeout_s: float = 3600.0,
                 whole_episodes: bool = False):
        self.ranks = [make_rank(r) for r in range(num_ranks)]
        self.mini_batch_size, self.micro_batch_size, self.resume_hint = mini_batch_size, micro_batch_size, resume_hint
        self.whole_episodes = whole_episodes  # the objective reads an episode's rows together (dpo: a pair)
        self.master = master  # the ranks' rendezvous: a file on this machine is removed at shutdown
        self.call_timeout_s = call_timeout_s

    def _get(self, refs, what: str):
        try:
            return ray.get(refs, timeout=self.call_timeout_s)
        except RayActorError as e:
            raise LearnerDied(f"a learner rank died during {what} ({type(e).__name__}); the run stops here. "
                              f"{self.resume_hint}") from None
        except RayTaskError as e:
            # A rank that raised (CUDA out of memory, a collective whose peer's node died, a DeepSpeed assertion)
            # leaves the group's state unknown: the run stops, resumable from its last checkpoint.
            raise LearnerDied(f"a learner rank failed during {what} ({failure_cause(e)}); the run stops here. "
                              f"{self.resume_hint}") from None
        except GetTimeoutError:
            raise LearnerDied(f"the learner ranks did not finish {what} within cluster.learner_timeout_s="
                              f"{self.call_timeout_s:g} s (a rank hangs, or waits on one that does; if the work is "
                              f"just slow, raise it); the run stops here. {self.resume_hint}") from None

    def _all(self, method: str, *args):
        return [getattr(rank, method).remote(*args) for rank in self.ranks]

    def wait_ready(self, timeout_s: float) -> None:
        try:
            ray.get([rank.__ray_ready__.remote() for rank in self.ranks], timeout=timeout_s)
        except GetTimeoutError:
            raise RuntimeError(f"{len(self.ranks)} learner rank(s) not ready within {timeout_s:.0f} s") from None
        except RayActorError as e:
            raise WorkerStartFailed(f"a learner rank failed to start: {failure_cause(e)}") from None

    def train_step(self, samples: Sequence[TrainSample], shuffle_seed: str | None = None) -> dict[str, float]:
        """One update over `samples`; `shuffle_seed` decides which episodes share a mini-batch."""
        local, plans = plan_batch(samples, len(self.ranks), self.mini_batch_size, self.micro_batch_size, shuffle_seed,
                                  self.whole_episodes)
        refs = [rank.train_step.remote(part, plan) for rank, part, plan in zip(self.ranks, local, plans)]
        return self._get(refs, "the update")[0]  # every rank returns the group's sums

    def sequence_kl(self, samples: Sequence[TrainSample], estimator: str) -> list[float]:
        """Each sample's summed KL estimate, policy against reference (GRPOLearner.sequence_kl), in the samples'
        order; the ranks share the samples as one mini-batch."""
        # Each sample its own episode, numbered by its place here: every rank's share maps back by it.
        tagged = [replace(s, episode=i) for i, s in enumerate(samples)]
        local, plans = plan_batch(tagged, len(self.ranks), max(len(tagged), 1), self.micro_batch_size)
        refs = [rank.sequence_kl.remote(part, estimator, plan) for rank, part, plan in zip(self.ranks, local, plans)]
        out = [0.0] * len(tagged)
        for part, values in zip(local, self._get(refs, "the KL of the rewards")):
            for s, value in zip(part, values):
                out[s.episode] = value
        return out

    def adapter_payload(self, version: int) -> tuple[str, ray.ObjectRef]:
        """Digest and object-store reference of the adapter (rank 0's; all ranks take part under ZeRO-3)."""
        refs = [rank.adapter_payload.options(num_returns=2).remote(version) for rank in self.ranks]
        digest = self._get(refs[0][0], "the adapter export")
        self._get([r[1] for r in refs[1:]], "the adapter export")
        return digest, refs[0][1]

    def export_adapter(self, path: str) -> str:
        return self._get(self._all("export_adapter", path), "the adapter export")[0]

    def save_checkpoint(self, folder: str) -> None:
        self._get(self._all("save_checkpoint", folder), "the checkpoint")

    def load_checkpoint(self, folder: str) -> None:
        self._get(self._all("load_checkpoint", folder), "loading the checkpoint")

    def release_memory(self) -> None:
        self._get(self._all("release_memory"), "releasing memory")

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        if self.master.startswith("file://"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.master.removeprefix("file://"))
