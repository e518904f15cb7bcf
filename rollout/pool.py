"""A pool of rollout workers behind one `generate`: requests split across workers by expected tokens, results
back in order, adapters pushed to every worker as bytes, and a dead or hung worker replaced mid-round.

The pool knows no protocol: a protocol (rollout.protocols) runs in the caller on top of `generate`, each of its
rounds one parallel call across the pool; a retried shard is regenerated under the same seed, so a replacement
changes no sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from tqdm import tqdm

from rollout.common import WorkerStartFailed, balance, failure_cause, shard_seed
from rollout.engine import ABORTED
from rollout.records import AdapterPayload, Completion, SamplingSpec

# A worker's first call waits for its engine to start (model load, KV cache) on top of the request itself.
STARTUP_GRACE_S = 600.0
# Tries of one shard of requests, each on a fresh worker after a failure; then its requests come back aborted
# (empty, finish_reason "abort": left out of training, rewards and evaluation summaries) and the step goes on.
MAX_ATTEMPTS = 3
# Replacement workers that may die while starting, in a whole run, before the run stops and names the cause: a
# worker that cannot start once (a bad model, a bad engine setting) will not start the next time either.
MAX_STARTUP_FAILURES = 2
# vLLM's smallest default max_num_seqs (CPU and most GPUs; larger GPUs run more): a call is timed in waves of this.
DEFAULT_MAX_NUM_SEQS = 256


class RolloutPool:
    """`num_workers` RolloutWorker actors made by `make_worker(index)`; replaced through it when they fail."""

    def __init__(self, make_worker: Callable[[int], ray.actor.ActorHandle], num_workers: int, *,
                 request_timeout_s: float = 600.0, seed: int = 0,
                 concurrent_sequences: int = DEFAULT_MAX_NUM_SEQS):
        self.make_worker, self.request_timeout_s, self.seed = make_worker, request_timeout_s, seed
        self.concurrent_sequences = concurrent_sequences
        self.workers = [make_worker(i) for i in range(num_workers)]
        self.payload: ray.ObjectRef | None = None  # the adapter every worker serves, for replacements
        self.version, self.digest = 0, ""
        self.restarts = self.retried_requests = self.failed_requests = 0
        self.startup_failures = 0
        self._loading: dict[int, ray.ObjectRef] = {}  # replacement -> its adapter load, checked before it serves
        self._fresh = set(range(num_workers))  # workers whose engine may still be starting
        self._round, self._calls = ("start",), 0

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every worker's engine is up (their resources are already reserved by then)."""
        refs = [w.__ray_ready__.remote() for w in self.workers]
        try:
            ray.get(refs, timeout=timeout_s)
        except GetTimeoutError:
            raise RuntimeError(f"{len(self.workers)} rollout worker(s) not ready within {timeout_s:.0f} s") from None
        except RayActorError as e:
            index = next((i for i, ref in enumerate(refs) if _failed(ref)), 0)
            raise WorkerStartFailed(f"rollout worker {index} failed to start: {failure_cause(e)}") from None
        self._fresh.clear()

    def sampling_refusals(self, specs: list[SamplingSpec]) -> list[str | None]:
        """Why vLLM would refuse each of `specs` (None: it accepts it), asked of a worker: the driver never
        imports vLLM, whose import alone is about 7 s of a run's start on 2 cores."""
        return ray.get(self.workers[0].sampling_refusals.remote(specs), timeout=self.request_timeout_s)

    def begin(self, *key) -> None:
        """Name the work that follows (e.g. ("train", step)): the seeds of its calls derive from it, not from
        what the pool did before, so a resumed run samples what the uninterrupted one did."""
        self._round, self._calls = key, 0

    def generate(self, conversations: list[list[dict[str, str]]], spec: SamplingSpec,
                 use_adapter: bool = True) -> list[list[Completion]]:
        """`spec.n` completions per conversation, in order, with each worker taking a balanced share.

        A worker that dies or hangs is replaced and its shard retried whole. A request that raises is a failed
        request, not a dead worker: the worker stays, and its shard's requests are retried one by one, so that a
        poison request fails alone. Every call a request is part of counts against its MAX_ATTEMPTS; one that
        fails that many times comes back aborted (empty, finish_reason "abort")."""
        self._calls += 1
        # Expected tokens: generated ones dominate; a prompt costs about a token per 4 characters.
        costs = [spec.n * spec.max_tokens + sum(len(m["content"]) for m in c) / 4 for c in conversations]
        shards = [s for s in balance(costs, len(self.workers)) if s]
        results: list[list[Completion] | None] = [None] * len(conversations)
        pending = {}  # ref -> (request indices, seed, attempts so far, worker index, worker handle, deadline)

        def submit(indices: list[int], seed: int, attempts: int, w: int) -> None:
            grace = STARTUP_GRACE_S if w in self._fresh else 0.0
            worker = self.workers[w]
            ref = worker.generate.remote([conversations[i] for i in indices], spec, use_adapter, seed)
            pending[ref] = (indices, seed, attempts + 1, w, worker,
                            time.monotonic() + self.call_timeout(len(indices) * spec.n) + grace)

        def give_up(indices: list[int]) -> None:
            tqdm.write(f"{len(indices)} rollout request(s) failed {MAX_ATTEMPTS} times; they come back empty")
            self.failed_requests += len(indices)
            for i in indices:
                results[i] = [Completion([], [], "", [], ABORTED, 0)] * spec.n

        def retry(indices: list[int], seed: int, attempts: int, w: int, worker, why: str) -> None:
            """The worker died, hung or served a stale adapter: a replacement runs the shard again."""
            if worker is self.workers[w]:  # else it was replaced already, for another request's failure
                self._replace(w, why)
            if attempts < MAX_ATTEMPTS:
                self.retried_requests += len(indices)
                submit(indices, seed, attempts, w)
            else:
                give_up(indices)

        def retry_alone(indices: list[int], seed: int, attempts: int, w: int, why: str) -> None:
            """A request raised in a live worker: each of the shard's requests again on its own, same worker."""
            if attempts >= MAX_ATTEMPTS:
                give_up(indices)
                return
            if len(indices) > 1:
                tqdm.write(f"rollout worker {w}: a request {why}; retrying its {len(indices)} requests one by one")
            self.retried_requests += len(indices)
            for j, i in enumerate(indices):
                submit([i], shard_seed(seed, "alone", j) if len(indices) > 1 else seed, attempts, w)

        for j, indices in enumerate(shards):
            submit(indices, shard_seed(self.seed, *self._round, self._calls, j), 0, j)
        while pending:
            deadline = min(entry[-1] for entry in pending.values())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                indices, seed, attempts, w, worker, _ = pending.pop(ref)
                try:
                    groups = ray.get(ref)
                except RayActorError as e:
                    if worker is not self.workers[w]:
                        submit(indices, seed, attempts - 1, w)  # killed with the worker it was queued on
                    else:
                        if getattr(e, "actor_init_failed", False):  # its constructor raised: it never served
                            self._startup_failed(w, e)
                        retry(indices, seed, attempts, w, worker,
                              f"died ({'starting' if w in self._fresh else 'mid-request'})")
                    continue
                except RayTaskError as e:
                    retry_alone(indices, seed, attempts, w, f"raised {failure_cause(e)}")
                    continue
                if not self._attested(w):
                    retry(indices, seed, attempts, w, worker, f"served without loading adapter version {self.version}")
                    continue
                self._fresh.discard(w)
                for i, group in zip(indices, groups):
                    results[i] = group
            now = time.monotonic()
            for ref, (indices, seed, attempts, w, worker, d) in list(pending.items()):
                if d <= now:
                    del pending[ref]
                    retry(indices, seed, attempts, w, worker,
                          f"hung: no answer within {self.call_timeout(len(indices) * spec.n):g} s "
                          f"(rollout.request_timeout_s={self.request_timeout_s:g} per wave of "
                          f"{self.concurrent_sequences} sequences)")
        return results

    def call_timeout(self, sequences: int) -> float:
        """A call's deadline: request_timeout_s for each wave of sequences the engine runs at once."""
        return self.request_timeout_s * math.ceil(sequences / self.concurrent_sequences)

    def _startup_failed(self, index: int, error: RayActorError) -> None:
        """A replacement that died before serving: tolerated MAX_STARTUP_FAILURES times in a run."""
        self.startup_failures += 1
        if self.startup_failures > MAX_STARTUP_FAILURES:
            raise WorkerStartFailed(f"rollout worker {index}: {self.startup_failures} replacements died while "
                                    f"starting; the last: {failure_cause(error)}")

    def _attested(self, index: int) -> bool:
        """A replacement's results count only once its adapter load returned the digest the pool holds."""
        load = self._loading.pop(index, None)
        if load is None:
            return True
        try:
            return ray.get(load) == self.digest
        except RayTaskError:
            return False

    def _replace(self, index: int, why: str, payload: ray.ObjectRef | None = None) -> None:
        tqdm.write(f"rollout worker {index} {why}; starting a replacement")
        ray.kill(self.workers[index], no_restart=True)
        worker = self.make_worker(index)
        payload = payload or self.payload
        self._loading.pop(index, None)
        if payload is not None:
            # Ordered before any request on this handle: the replacement serves the current version first.
            self._loading[index] = worker.load_adapter_payload.remote(payload)
        self.workers[index] = worker
        self._fresh.add(index)
        self.restarts += 1

    def push(self, payload: AdapterPayload | ray.ObjectRef, digest: str, version: int) -> None:
        """Serve `payload` (bytes, or an object-store ref to them) on every worker; each must report loading
        exactly `digest`."""
        ref = payload if isinstance(payload, ray.ObjectRef) else ray.put(payload)
        loads = [w.load_adapter_payload.remote(ref) for w in self.workers]
        self._loading.clear()
        for index, load in enumerate(loads):
            try:
                loaded = ray.get(load, timeout=self.request_timeout_s)
            except (RayActorError, GetTimeoutError) as e:
                why = "died while loading the adapter" if isinstance(e, RayActorError) else \
                    f"did not load the adapter within rollout.request_timeout_s={self.request_timeout_s:g}"
                self._replace(index, why, ref)  # the replacement loads it first
                continue
            if loaded != digest:
                raise RuntimeError(f"rollout worker {index} loaded adapter digest {loaded[:12]}, "
                                   f"not the {digest[:12]} sent for version {version}")
        self.payload, self.version, self.digest = ref, version, digest

    def sleep(self) -> None:
        """Free every engine's GPU memory for a colocated learner (engines wake on their next call)."""
        ray.get([w.sleep.remote() for w in self.workers], timeout=self.request_timeout_s)

    def take_counters(self) -> dict[str, float]:
        """Restarts, retried and failed requests since the last call (one step's worth)."""
        counts = {"rollout/worker_restarts": float(self.restarts), "rollout/retried_requests": float(self.retried_requests),
                  "rollout/failed_requests": float(self.failed_requests)}
        self.restarts = self.retried_requests = self.failed_requests = 0
        return counts

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)


def _failed(ref: ray.ObjectRef) -> bool:
    try:
        ray.get(ref, timeout=0)
    except RayActorError:
        return True
    except GetTimeoutError:
        return False
    return False
