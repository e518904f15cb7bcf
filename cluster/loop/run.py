"""The actors and state of one training run: placement, rollout pool, learner group; checkpoints written and
restored (the adapter a checkpoint holds pushed back to the engines)."""

from __future__ import annotations

import pickle
from pathlib import Path

from cluster.checkpoint import Checkpoints, load_state
from cluster.config import RunConfig
from rollout.common import write_files
from rollout.records import AdapterPayload

AHEAD = "rollouts-ahead.pkl"  # an overlapped schedule's rollouts made ahead of their step


class Run:
    """The actors and state of one training run; a schedule (cluster/loop/sync.py, overlap.py) drives it."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.checkpoints = Checkpoints(config.checkpoint.dir or run_dir / "checkpoints", config.checkpoint.keep)
        self.resume_hint = f"Resume with: motif train --config {run_dir / 'config.yaml'} --resume auto"
        self.pool = self.learner = self.group = None

    def start(self, model_path: str) -> None:
        from cluster.workers import reserve_placement, start_learner_group, start_rollout_pool

        self.group, worker_bundles, learner_bundles = reserve_placement(self.config)
        self.pool = start_rollout_pool(self.config, model_path, self.group, worker_bundles)
        self.learner = start_learner_group(self.config, model_path, self.resume_hint, self.group, learner_bundles)
        timeout = self.config.cluster.ready_timeout_s
        self.pool.wait_ready(timeout)
        self.learner.wait_ready(timeout)

    def save(self, step: int, state: dict, ahead: dict | None = None) -> Path:
        """`ahead`: the rollouts an overlapped schedule made for later steps, and the digests they claim; a resume
        trains them instead of sampling those steps again."""
        import ray

        def write(folder: Path) -> None:
            self.learner.save_checkpoint(str(folder / "learner"))
            write_files(folder / "adapter", ray.get(self.pool.payload).files if self.pool.payload else {})
            if ahead:
                with (folder / AHEAD).open("wb") as f:
                    pickle.dump(ahead, f)

        return self.checkpoints.save(step, {**state, "adapter_digest": self.pool.digest}, write)

    @staticmethod
    def saved_rollouts(folder: Path) -> dict:
        """What `save` was given as `ahead`, or nothing."""
        if not (folder / AHEAD).exists():
            return {}
        with (folder / AHEAD).open("rb") as f:
            return pickle.load(f)

    def restore(self, folder: Path) -> dict:
        state = load_state(folder)
        self.learner.load_checkpoint(str(folder / "learner"))
        if state["adapter_version"]:
            payload = AdapterPayload.from_folder(state["adapter_version"], folder / "adapter")
            if payload.digest != state["adapter_digest"]:
                raise RuntimeError(f"checkpoint {folder}: adapter files do not match the digest recorded at save")
            self.pool.push(payload, payload.digest, payload.version)
        return state

    def stop(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actors in (self.pool, self.learner):
            if actors is not None:
                actors.shutdown()
        if self.group is not None:
            remove_placement_group(self.group)
