"""A pool of rollout workers behind one `generate`: requests split across workers by expected tokens, results
back in order, adapters pushed to every worker as bytes, and a dead or hung worker replaced mid-round.

The MOTIF protocol runs here, in the caller, on top of `generate`: each round is one parallel call across the
pool, and a retried shard is regenerated under the same seed, so a replacement changes no sample.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from tqdm import tqdm

from rollout.engine import ABORTED
from rollout.protocols import MotifSpec, motif_rollout
from rollout.records import AdapterPayload, Completion, MotifTrajectory, SamplingSpec

# A worker's first call waits for its engine to start (model load, KV cache) on top of the request itself.
STARTUP_GRACE_S = 600.0
# Tries of one shard of requests, each on a fresh worker after a failure; then its requests come back aborted
# (empty, finish_reason "abort": scored, never trained on) and the step goes on.
MAX_ATTEMPTS = 3


def balance(costs: Sequence[float], bins: int) -> list[list[int]]:
    """Split item indices into `bins` shards of near-equal total cost (largest first onto the lightest shard);
    each shard keeps its indices in their original order."""
    shards: list[list[int]] = [[] for _ in range(bins)]
    loads = [0.0] * bins
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        lightest = min(range(bins), key=lambda b: (loads[b], b))
        shards[lightest].append(i)
        loads[lightest] += costs[i]
    return [sorted(s) for s in shards]


def shard_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class RolloutPool:
    """`num_workers` RolloutWorker actors made by `make_worker(index)`; replaced through it when they fail."""

    def __init__(self, make_worker: Callable[[int], ray.actor.ActorHandle], num_workers: int, *,
                 request_timeout_s: float = 600.0, seed: int = 0):
        self.make_worker, self.request_timeout_s, self.seed = make_worker, request_timeout_s, seed
        self.workers = [make_worker(i) for i in range(num_workers)]
        self.payload: ray.ObjectRef | None = None  # the adapter every worker serves, for replacements
        self.version, self.digest = 0, ""
        self.restarts = self.retried_requests = self.failed_requests = 0
        self._fresh = set(range(num_workers))  # workers whose engine may still be starting
        self._round, self._calls = ("start",), 0

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every worker's engine is up (their resources are already reserved by then)."""
        try:
            ray.get([w.__ray_ready__.remote() for w in self.workers], timeout=timeout_s)
        except GetTimeoutError:
            raise RuntimeError(f"{len(self.workers)} rollout worker(s) not ready within {timeout_s:.0f} s") from None
        self._fresh.clear()

    def begin(self, *key) -> None:
        """Name the work that follows (e.g. ("train", step)): the seeds of its calls derive from it, not from
        what the pool did before, so a resumed run samples what the uninterrupted one did."""
        self._round, self._calls = key, 0

    def generate(self, conversations: list[list[dict[str, str]]], spec: SamplingSpec,
                 use_adapter: bool = True) -> list[list[Completion]]:
        """`spec.n` completions per conversation, in order, with each worker taking a balanced share."""
        self._calls += 1
        # Expected tokens: generated ones dominate; a prompt costs about a token per 4 characters.
        costs = [spec.n * spec.max_tokens + sum(len(m["content"]) for m in c) / 4 for c in conversations]
        shards = [s for s in balance(costs, len(self.workers)) if s]
        seeds = [shard_seed(self.seed, *self._round, self._calls, j) for j in range(len(shards))]
        results: list[list[Completion] | None] = [None] * len(conversations)
        pending = {}  # ref -> (shard number, worker index, deadline)
        attempts = [0] * len(shards)

        def submit(j: int, w: int) -> None:
            attempts[j] += 1
            grace = STARTUP_GRACE_S if w in self._fresh else 0.0
            ref = self.workers[w].generate.remote([conversations[i] for i in shards[j]], spec, use_adapter, seeds[j])
            pending[ref] = (j, w, time.monotonic() + self.request_timeout_s + grace)

        def retry(j: int, w: int, why: str) -> None:
            self._replace(w, why)
            if attempts[j] < MAX_ATTEMPTS:
                self.retried_requests += len(shards[j])
                submit(j, w)
                return
            tqdm.write(f"{len(shards[j])} rollout requests failed {MAX_ATTEMPTS} times; they come back empty")
            self.failed_requests += len(shards[j])
            for i in shards[j]:
                results[i] = [Completion([], [], "", [], ABORTED, 0)] * spec.n

        for j in range(len(shards)):
            submit(j, j)
        while pending:
            deadline = min(d for _, _, d in pending.values())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                j, w, _ = pending.pop(ref)
                try:
                    groups = ray.get(ref)
                except RayActorError:
                    retry(j, w, f"died ({'starting' if w in self._fresh else 'mid-request'})")
                    continue
                self._fresh.discard(w)
                for i, group in zip(shards[j], groups):
                    results[i] = group
            now = time.monotonic()
            for ref, (j, w, d) in list(pending.items()):
                if d <= now:
                    del pending[ref]
                    retry(j, w, f"hung: no answer within rollout.request_timeout_s={self.request_timeout_s:g}")
        return results

    def _replace(self, index: int, why: str, payload: ray.ObjectRef | None = None) -> None:
        tqdm.write(f"rollout worker {index} {why}; starting a replacement")
        ray.kill(self.workers[index], no_restart=True)
        worker = self.make_worker(index)
        payload = payload or self.payload
        if payload is not None:
            # Ordered before any request on this handle: the replacement serves the current version first.
            worker.load_adapter_payload.remote(payload)
        self.workers[index] = worker
        self._fresh.add(index)
        self.restarts += 1

    def motif_rollout(self, questions: Sequence[str], spec: MotifSpec) -> list[MotifTrajectory]:
        return motif_rollout(self.generate, questions, spec)

    def push(self, payload: AdapterPayload | ray.ObjectRef, digest: str, version: int) -> None:
        """Serve `payload` (bytes, or an object-store ref to them) on every worker; each must report loading
        exactly `digest`."""
        ref = payload if isinstance(payload, ray.ObjectRef) else ray.put(payload)
        loads = [w.load_adapter_payload.remote(ref) for w in self.workers]
        for index, load in enumerate(loads):
            try:
                loaded = ray.get(load)
            except RayActorError:
                self._replace(index, "died while loading the adapter", ref)  # the replacement loads it first
                continue
            if loaded != digest:
                raise RuntimeError(f"rollout worker {index} loaded adapter digest {loaded[:12]}, "
                                   f"not the {digest[:12]} sent for version {version}")
        self.payload, self.version, self.digest = ref, version, digest

    def take_counters(self) -> dict[str, float]:
        """Restarts, retried and failed requests since the last call (one step's worth)."""
        counts = {"rollout/worker_restarts": float(self.restarts), "rollout/retried_requests": float(self.retried_requests),
                  "rollout/failed_requests": float(self.failed_requests)}
        self.restarts = self.retried_requests = self.failed_requests = 0
        return counts

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
