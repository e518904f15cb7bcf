"""`logging.trackers` for real: a 2-step run and its resume log every metric of metrics.jsonl to W&B (offline, read
back from its run files) and MLflow (its local store, read back with MLflow's client, directly and through a real
`mlflow server` on loopback), each continuing the same tracker run on resume. A missing tracker is refused
before Ray starts, naming its extra."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from learner.rendezvous import free_port
from tests.test_end_to_end import jsonl_scalars, motif_train, tensorboard_scalars

LEVELDB_BLOCK = 32768  # the .wandb file: a 7-byte header, then LevelDB log records in blocks of this size


def wandb_records(path: Path):
    """Every record of an offline run's .wandb file, parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if LEVELDB_BLOCK - pos % LEVELDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += LEVELDB_BLOCK - pos % LEVELDB_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_history(paths) -> tuple[dict[str, dict[int, float]], dict]:
    """{metric: {step: value}} over the runs' files, without W&B's own `_` keys, and the config as logged."""
    table, config = {}, {}
    for path in paths:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                for item in record.history.item:
                    key = item.key or ".".join(item.nested_key)
                    if not key.startswith("_"):
                        table.setdefault(key, {})[record.history.step.num] = json.loads(item.value_json)
            elif kind == "run":
                config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
    return table, config


def mlflow_history(client, run_id: str, keys) -> dict[str, dict[int, float]]:
    return {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in keys}


def test_the_config_names_every_registered_tracker():
    from cluster.config.schema import TRACKER_NAMES
    from cluster.trackers import TRACKERS

    assert tuple(TRACKERS) == TRACKER_NAMES


def test_a_missing_tracker_is_one_line_naming_its_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    from cluster.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    code = main(["train", "--config", "tests/configs/smoke.yaml", f"output_dir={tmp_path / 'run'}",
                 "logging.trackers=[tensorboard, wandb]"])
    err = capsys.readouterr().err
    assert code == 2 and "logging.trackers: wandb is not installed" in err and "pip install 'motif-rl[wandb]'" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "metrics.jsonl").exists()


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path):
    """A real `mlflow server` on a free loopback port over the store `backend`; yields its URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", backend, "--default-artifact-root", artifacts.as_uri(),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_a_run_and_its_resume_log_every_metric_to_wandb_and_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cluster.trackers import MLflow

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    trackers = "logging.trackers=[tensorboard, wandb, mlflow]"
    motif_train(tmp_path, run_dir, trackers)
    ids = json.loads((run_dir / "checkpoints" / "step-00000002" / "driver.json").read_text())["trackers"]
    assert set(ids) == {"wandb", "mlflow"}
    motif_train(tmp_path, run_dir, trackers, "steps=3", "--resume", "auto")
    assert json.loads((run_dir / "checkpoints" / "step-00000003" / "driver.json").read_text())["trackers"] == ids

    expected = jsonl_scalars(run_dir, float)  # every numeric metric of steps 1-3, at full precision
    assert sorted({s for steps in expected.values() for s in steps}) == [1, 2, 3] and len(expected) > 20
    assert tensorboard_scalars(run_dir) == jsonl_scalars(run_dir)  # each step once there too

    # W&B: the fresh run and its resume wrote a folder each, both under the one run id; together they hold every
    # metric at every step, and the config as logged.
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{ids['wandb']}*/run-{ids['wandb']}.wandb"))
    assert len(files) == 2
    history, config = wandb_history(files)
    assert history == expected
    assert config["rollout"]["rounds"] == 2 and config["logging"]["trackers"] == ["tensorboard", "wandb", "mlflow"]

    # MLflow: one run in the run folder's store, the id the checkpoint kept, every metric once per step, the
    # resolved config as parameters; read directly and through a real server on that store.
    store = f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("motif-rl")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [ids["mlflow"]]
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["rollout.rounds"] == "2" and run.data.params["learner.lora_rank"] == "8"
    assert set(run.data.metrics) == set(expected)
    assert mlflow_history(client, ids["mlflow"], expected) == expected

    # The same run through a real `mlflow server` on that store, and a tracker logging to it by MLFLOW_TRACKING_URI
    # (nothing local then).
    with mlflow_server(store, tmp_path / "artifacts") as url:
        served = MlflowClient(url)
        assert mlflow_history(served, ids["mlflow"], expected) == expected
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracker = MLflow(tmp_path / "elsewhere", "served", {"rollout": {"rounds": 3}}, None, None)
        tracker.log(1, {"loss": 0.25, "reward/accuracy": 0.5})
        tracker.log(2, {"loss": 0.125, "reward/accuracy": 0.75})
        tracker.close(ok=True)
        assert served.get_run(tracker.run_id).data.params == {"rollout.rounds": "3"}
        assert mlflow_history(served, tracker.run_id, ["loss", "reward/accuracy"]) == {
            "loss": {1: 0.25, 2: 0.125}, "reward/accuracy": {1: 0.5, 2: 0.75}}
        assert served.get_run(tracker.run_id).info.status == "FINISHED"
    assert not (tmp_path / "elsewhere").exists()
