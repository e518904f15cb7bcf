"""The overlapped schedule (rollout.max_staleness = S): a thread samples the next steps' rollouts while the
current step trains, so neither the engines nor the learner wait for the other.

- **Admission bounds staleness.** The rollout of step j starts only once step j-1-S is done and its adapter
  pushed: when step j trains, its samples are at most S versions behind the learner's. Nothing sampled is
  thrown away to keep that bound (throwing finished samples away starves the long ones); the thread waits.
- **One version per rollout.** A step's rollout runs every round under the adapter it started with; pushes land
  between rollouts, in the thread, and `RolloutPool.push` returns only once every worker serves the new version,
  so a rollout that claims a version runs under it (the digest of each sample is checked as in the synchronous
  loop, `step.attested`).
- **The window is checked again where samples are trained** (`in_window`): a sample whose version is more than S
  behind the learner's, or whose digest is not the one pushed as that version, is dropped and counted
  (rollout/outside_window; rollout/stale_dropped counts those whose digest was not the pool's when sampled). If
  S+1 steps in a row bring nothing but such samples, the workers are not serving what is pushed, and the run
  stops and says so (StaleWeights) rather than skip steps or train on what it has.
- **A correction is on** (learner.correction=auto is tis at S >= 1, learner/objectives/tis.py).
- **Nothing is lost on a stop.** Evaluation and checkpoints wait for the rollout in flight (`quiet`); a checkpoint
  saves the rollouts made ahead of their step, and a resumed run trains them, so every prompt is trained once.
At S=0 this is the synchronous loop, call for call (tests/test_behaviour_unchanged.py)."""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import replace

from cluster.loop.step import StepParts, StepResult, StepRollout, learn_step, prompt_batch, sample_step
from cluster.tasks.data import Problem


class StaleWeights(RuntimeError):
    """Steps in a row trained nothing sampled under an adapter the learner pushed within the staleness window."""


def in_window(rolled: StepRollout, version: int, max_staleness: int,
              digests: dict[int, str]) -> tuple[StepRollout, dict]:
    """The rollout's episodes sampled under an adapter at most `max_staleness` versions behind the learner's
    (`version`) and whose digest is the one pushed as that version; the others dropped and counted. With the
    staleness of what is kept (versions behind the learner's)."""
    kept = [e for e in rolled.episodes
            if version - e.root.completion.adapter_version <= max_staleness
            and digests.get(e.root.completion.adapter_version) == e.root.completion.adapter_digest]
    ages = [version - e.root.completion.adapter_version for e in kept]
    return replace(rolled, episodes=kept), {
        "rollout/outside_window": float(len(rolled.episodes) - len(kept)),
        "rollout/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
        "rollout/staleness_max": float(max(ages, default=0)),
    }


class Overlapped:
    """Steps `first`.. `last`, their rollouts made ahead in a thread of their own, from the learner's adapter
    `version` (the pool serves it); `rollouts` are those a checkpoint saved, `digests` the adapter digest of each
    version they claim."""

    def __init__(self, parts: StepParts, problems: list[Problem], first: int, *, last: int, version: int,
                 rollouts: dict[int, StepRollout] | None = None, digests: dict[int, str] | None = None):
        r = parts.config.rollout
        self.parts, self.problems, self.max_staleness, self.last = parts, problems, r.max_staleness, last
        self.ready = dict(rollouts or {})
        self.digests = {**(digests or {}), version: parts.pool.digest}
        self.next = max([first - 1, *self.ready]) + 1  # the next step to sample
        self.done = first - 1  # the last step done, its adapter (if it trained) served by the pool
        self.jobs: deque = deque()  # ("push", step, digest, payload) or ("skip", step), in step order
        self.busy = self.closed = False
        self.paused = 0
        self.error: BaseException | None = None
        self.outside_streak = 0
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._serve, name="rollouts-ahead", daemon=True)
        self.thread.start()

    def _admitted(self) -> bool:
        return self.next <= self.last and self.next - 1 - self.max_staleness <= self.done

    def _serve(self) -> None:
        """The thread: pushes as they come, in order; rollouts as admission allows, none while paused."""
        r, seed = self.parts.config.rollout, self.parts.config.data.shuffle_seed
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or self.jobs or (not self.paused and self._admitted()))
                if self.closed:
                    return
                job = self.jobs.popleft() if self.jobs else ("rollout", self.next)
                if job[0] == "rollout":
                    self.next += 1
                self.busy = True
            try:
                if job[0] == "rollout":
                    rolled = sample_step(self.parts, prompt_batch(self.problems, r.prompts_per_step, seed, job[1] - 1),
                                         job[1])
                elif job[0] == "push":
                    self.parts.pool.push(job[3], job[2], job[1])
            except BaseException as e:  # handed to the main thread, which raises it
                with self.cond:
                    self.error, self.busy = e, False
                    self.cond.notify_all()
                return
            with self.cond:
                self.busy = False
                if job[0] == "rollout":
                    self.ready[job[1]] = rolled
                else:
                    self.done = job[1]
                    if job[0] == "push":
                        self.digests[job[1]] = job[2]
                        for old in [v for v in self.digests if v < job[1] - self.max_staleness]:
                            del self.digests[old]
                self.cond.notify_all()

    def _wait(self, ready) -> None:
        self.cond.wait_for(lambda: self.error is not None or ready())
        if self.error is not None:
            raise self.error

    def step(self, step: int, version: int) -> StepResult:
        """Train step `step` on its rollout (waiting for it if it is still being made); the learner's adapter is
        `version` until this step pushes its own."""
        t0 = time.perf_counter()
        with self.cond:
            self._wait(lambda: step in self.ready)
            rolled = self.ready.pop(step)
            digests = dict(self.digests)
        waited = time.perf_counter() - t0
        rolled, window = in_window(rolled, version, self.max_staleness, digests)
        if not rolled.episodes and (window["rollout/outside_window"] or rolled.dropped["stale"]):
            self.outside_streak += 1
            if self.outside_streak > self.max_staleness:
                raise StaleWeights(
                    f"{self.outside_streak} steps in a row (to step {step}) sampled nothing under an adapter within "
                    f"rollout.max_staleness={self.max_staleness} versions of the learner's {version}: the rollout "
                    "workers are not serving the adapters pushed to them")
        else:
            self.outside_streak = 0
        result = learn_step(self.parts, rolled, step, push=self._push)
        if not result.trained:
            self._enqueue(("skip", step))
        result.metrics.update(window, time_wait_rollout=waited)  # what the overlap did not hide
        return result

    def _push(self, pool, learner, version: int) -> None:
        """learn_step's push: the adapter is exported now and served by the thread before its next rollout."""
        digest, payload = learner.adapter_payload(version)
        self._enqueue(("push", version, digest, payload))

    def _enqueue(self, job: tuple) -> None:
        with self.cond:
            self.jobs.append(job)
            self.cond.notify_all()

    @contextmanager
    def quiet(self):
        """No rollout in flight, every push served, and none started until the block ends: evaluation and
        checkpoints see the pool as the synchronous loop leaves it."""
        with self.cond:
            self.paused += 1
            try:
                self._wait(lambda: not self.busy and not self.jobs)
            except BaseException:
                self.paused -= 1
                raise
        try:
            yield
        finally:
            with self.cond:
                self.paused -= 1
                self.cond.notify_all()

    def pending(self) -> dict:
        """The rollouts made ahead of their step (for a checkpoint, inside `quiet`), with the digests they claim."""
        with self.cond:
            return {"rollouts": dict(self.ready), "digests": dict(self.digests)} if self.ready else {}

    def close(self) -> None:
        """Stop sampling; a rollout in flight ends with the actors the run stops next."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
