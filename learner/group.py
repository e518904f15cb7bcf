"""The learner ranks as one: shards each mini-batch across the ranks by tokens, gathers their metrics, and
turns a dead rank into an error that says how to resume."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from learner.records import TrainSample
from rollout.failures import WorkerStartFailed, failure_cause
from rollout.pool import balance


class LearnerDied(RuntimeError):
    """A learner rank stopped or hangs; the run cannot go on without it (its optimizer state shard is gone)."""


@ray.remote(num_cpus=0)
def rendezvous() -> str:
    """Where the ranks meet, as seen from rank 0's node (see learner.actor.rendezvous_address)."""
    from learner.rendezvous import rendezvous_address

    return rendezvous_address(ray.util.get_node_ip_address())


def shard_plan(samples: Sequence[TrainSample], ranks: int, mini_batch_size: int, micro_batch_size: int):
    """Each rank's samples and plan: every mini-batch split across ranks with balanced token counts, then into
    micro-batches; ranks with fewer micro-batches get empty ones, so all make the same collective calls (in the
    update and in the old/reference logprob passes, which run over the same micro-batches)."""
    local: list[list[TrainSample]] = [[] for _ in range(ranks)]
    plans: list[list] = [[] for _ in range(ranks)]
    for start in range(0, len(samples), mini_batch_size):
        mini = list(range(start, min(start + mini_batch_size, len(samples))))
        parts = balance([len(samples[i].completion_ids) + len(samples[i].prompt_ids) / 4 for i in mini], ranks)
        micros_per_rank = []
        for r, part in enumerate(parts):
            indices = list(range(len(local[r]), len(local[r]) + len(part)))
            local[r] += [samples[mini[i]] for i in part]
            micros_per_rank.append([indices[j : j + micro_batch_size] for j in range(0, len(indices), micro_batch_size)])
        depth = max(len(m) for m in micros_per_rank)
        tokens = sum(len(samples[i].completion_ids) for i in mini)
        for r, micros in enumerate(micros_per_rank):
            plans[r].append((micros + [[] for _ in range(depth - len(micros))], tokens))
    return local, plans


class LearnerGroup:
    def __init__(self, make_rank: Callable[[int], ray.actor.ActorHandle], num_ranks: int, mini_batch_size: int,
                 micro_batch_size: int, resume_hint: str, master: str = "", call_timeout_s: float = 3600.0):
        self.ranks = [make_rank(r) for r in range(num_ranks)]
        self.mini_batch_size, self.micro_batch_size, self.resume_hint = mini_batch_size, micro_batch_size, resume_hint
        self.master = master  # the ranks' rendezvous: a file on this machine is removed at shutdown
        self.call_timeout_s = call_timeout_s

    def _get(self, refs, what: str):
        try:
            return ray.get(refs, timeout=self.call_timeout_s)
        except RayActorError as e:
            raise LearnerDied(f"a learner rank died during {what} ({type(e).__name__}); the run stops here. "
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

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        local, plans = shard_plan(samples, len(self.ranks), self.mini_batch_size, self.micro_batch_size)
        refs = [rank.train_step.remote(part, plan) for rank, part, plan in zip(self.ranks, local, plans)]
        return self._get(refs, "the update")[0]  # every rank returns the group's sums

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

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        if self.master.startswith("file://"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.master.removeprefix("file://"))
