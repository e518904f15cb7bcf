"""The trackers a run's scalars go to beside metrics.jsonl, by name (`logging.trackers`): TensorBoard (the
default), Weights & Biases and MLflow. Each gets the same scalars at the same steps and the resolved config as
parameters; one that names its run (W&B, MLflow) keeps that id in the checkpoint, so a resumed run continues it.

A tracker is a class registered here: `Tracker(run_dir, project, params, run_id, first_step)` with `run_id`
(None when it names no run), `where` (one console line), `log(step, scalars)` and `close(ok)`. `module` is the
package it imports and `extra` the motif-rl extra that installs it."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from cluster.config import BadInput
from rollout.common import registrar

TRACKERS: dict[str, type] = {}
register_tracker = registrar(TRACKERS)


def check_installed(names) -> None:
    """Before Ray starts: each named tracker's package is importable, or one line naming its extra."""
    for name in names:
        tracker = TRACKERS[name]
        if tracker.extra and importlib.util.find_spec(tracker.module) is None:
            raise BadInput(f"logging.trackers: {name} is not installed; install the extra: "
                           f"pip install 'motif-rl[{tracker.extra}]'")


def flat_params(settings: dict, prefix: str = "") -> dict[str, str]:
    """The config as `section.key` -> its value as text, the way parameters are listed."""
    params = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[prefix + key] = str(value)
    return params


@register_tracker("tensorboard")
class TensorBoard:
    module, extra = "tensorboard", None

    def __init__(self, run_dir: Path, project: str, params: dict, run_id: str | None, first_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id, self.dir = None, run_dir / "tensorboard"
        self.where = f"tensorboard --logdir {self.dir}"
        # A resumed run purges the events from its first step on, so the events hold each step once.
        self._board = SummaryWriter(str(self.dir), purge_step=first_step)

    def log(self, step: int, scalars: dict) -> None:
        for key, value in scalars.items():
            self._board.add_scalar(key, value, step)
        self._board.flush()

    def close(self, ok: bool) -> None:
        self._board.close()


@register_tracker("wandb")
class WandB:
    """The mode is W&B's own (`WANDB_MODE=offline`: nothing leaves the machine); the run's files go to
    RUN_DIR/wandb. A resumed offline run writes a second folder under the same id (`wandb sync --append`)."""

    module, extra = "wandb", "wandb"

    def __init__(self, run_dir: Path, project: str, params: dict, run_id: str | None, first_step: int | None):
        import wandb

        # console="off": the driver's console is its own (cluster/console.py), not W&B's to capture.
        self._run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                               config=params, settings=wandb.Settings(console="off", quiet=True))
        self.run_id = self._run.id
        self.where = f"wandb: run {self.run_id} in project {project} ({self._run.dir})"

    def log(self, step: int, scalars: dict) -> None:
        self._run.log(scalars, step=step)

    def close(self, ok: bool) -> None:
        self._run.finish(exit_code=0 if ok else 1)


MLFLOW_PARAM_CHARS = 6000  # MLflow refuses longer parameter values
MLFLOW_BATCH = 100  # parameters (and 1000 metrics) per log_batch call


@register_tracker("mlflow")
class MLflow:
    """To MLFLOW_TRACKING_URI, or to a SQLite store in RUN_DIR/mlflow (MLflow's local store: its plain-file
    store is in maintenance mode and refused by default), in the experiment `logging.project`."""

    module, extra = "mlflow", "mlflow"

    def __init__(self, run_dir: Path, project: str, params: dict, run_id: str | None, first_step: int | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = run_dir / "mlflow"
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        self._client = client = MlflowClient(uri)
        if run_id is None:
            experiment = client.get_experiment_by_name(project)
            artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (local / "artifacts").as_uri()
            experiment_id = (experiment.experiment_id if experiment else
                             client.create_experiment(project, artifact_location=artifacts))
            run_id = client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            # Logged once: MLflow refuses to change a parameter, and a resume may change `steps`.
            entries = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in flat_params(params).items()]
            for i in range(0, len(entries), MLFLOW_BATCH):
                client.log_batch(run_id, params=entries[i:i + MLFLOW_BATCH])
        else:
            client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.where = f"mlflow: run {run_id} in experiment {project} at {uri}"

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 10 * MLFLOW_BATCH):
            self._client.log_batch(self.run_id, metrics=metrics[i:i + 10 * MLFLOW_BATCH])

    def close(self, ok: bool) -> None:
        self._client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
