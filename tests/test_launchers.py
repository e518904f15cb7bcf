"""The ways users launch motif-rl beyond a local run: Slurm (for real, on a single-node Slurm), docker compose and
the Dockerfiles (validated and linted: no Docker engine here), `ray up` (Ray's own schema) and KubeRay (its CRD
schema)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from learner.rendezvous import free_port
from tests.conftest import REPO
from tests.ray_head import processes_using
from tests.slurm_cluster import start_slurm

LAUNCH = Path(REPO) / "cluster" / "launch"
BIN = Path(sys.executable).parent


@pytest.fixture
def slurm():
    cluster = start_slurm()
    yield cluster
    cluster.stop()


def test_sbatch_starts_ray_trains_and_cleans_up(slurm, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "slurm.out"
    job = slurm.run("sbatch", "--wait", "--parsable", f"--output={out}", str(LAUNCH / "slurm.sbatch"),
                    "--config", "tests/configs/smoke.yaml", "steps=2", f"output_dir={run_dir}",
                    f"model.tiny_model_dir={tmp_path / 'tiny'}", "cluster.ready_timeout_s=120", cwd=REPO, timeout=1200,
                    env={"HF_HUB_OFFLINE": "1", "GPUS_PER_NODE": "0",
                         # the test session's own Ray holds the default job-agent port on this machine
                         "RAY_DASHBOARD_AGENT_PORT": str(free_port())})
    log = out.read_text() if out.exists() else "(no output file)"
    assert job.returncode == 0, f"{job.stderr}\n{log[-5000:]}"
    assert "ray: joining the cluster at" in log and "step 2 |" in log
    assert "succeeded" in log  # the job's final status, as `ray job submit` reports it
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # Cleanup on exit: nothing of that job's Ray is left running.
    job_id = job.stdout.strip().split(";")[0]
    assert not processes_using(Path(f"/tmp/ray-motif-{job_id}"))


def compose(*args: str, token: str | None = "test-token", files=("compose.yaml",), **env_vars: str
            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN" and not k.startswith("MOTIF_")}
    if token:
        env["RAY_AUTH_TOKEN"] = token
    names = [arg for name in files for arg in ("-f", f"docker/{name}")]
    return subprocess.run([str(BIN / "docker-compose"), *names, *args], cwd=REPO, env={**env, **env_vars},
                          capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_with_token_auth_and_a_loopback_job_api():
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"ray-head", "ray-worker", "job"}
    for service in services.values():
        assert service["environment"]["RAY_AUTH_MODE"] == "token"
        assert service["environment"]["RAY_AUTH_TOKEN"] == "test-token"
        assert any(v["target"] == "/runs" and v["type"] == "volume" for v in service["volumes"])
        assert service["command"][0] == "cluster/launch/ray-node.sh"  # the script Slurm runs too
    assert [p["host_ip"] for p in services["ray-head"]["ports"]] == ["127.0.0.1"]
    assert services["ray-head"]["healthcheck"]["test"][:2] == ["CMD", "ray"]
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["job"]["command"][1:4] == ["submit", "http://ray-head:8265", "--"]
    assert "motif" in services["job"]["command"] and "train" in services["job"]["command"]

    # No token, no cluster: compose refuses to render the file (this Compose CLI still exits 0 on it).
    missing = compose("config", token=None)
    assert "RAY_AUTH_TOKEN is missing a value" in missing.stderr and not missing.stdout.strip()


def test_gpu_overlay_renders_the_gpu_image_reserved_devices_and_the_jobs_gpu_settings():
    def render(**env_vars: str) -> dict:
        result = compose("config", "--format", "json", files=("compose.yaml", "compose.gpu.yaml"), **env_vars)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr
        return json.loads(result.stdout)["services"]

    services = render()
    cpu = json.loads(compose("config", "--format", "json").stdout)["services"]
    for name, service in services.items():
        assert service["image"] == "motif-rl:gpu" and service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert Path(service["build"]["context"]) == Path(REPO)
        # Everything else is compose.yaml's: token auth, the runs volume, the health checks.
        same = {k: v for k, v in service.items() if k not in ("image", "build", "deploy", "command")}
        assert same == {k: v for k, v in cpu[name].items() if k not in ("image", "build", "deploy", "command")}
    assert [name for name, s in services.items() if "deploy" in s] == ["ray-worker"]
    assert services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["ray-worker"]["command"] == cpu["ray-worker"]["command"]
    assert services["job"]["command"] == cpu["job"]["command"] + ["rollout.num_gpus=1", "cluster.learner_num_gpus=1"]

    # The user's training arguments come first; the GPU settings after them, as the variables set them.
    services = render(MOTIF_TRAIN_ARGS="--config my.yaml steps=80", MOTIF_WORKER_GPUS="2", MOTIF_ROLLOUT_GPUS="1",
                      MOTIF_LEARNER_GPUS="0.5")
    assert services["job"]["command"][-5:] == ["--config", "my.yaml", "steps=80", "rollout.num_gpus=1",
                                               "cluster.learner_num_gpus=0.5"]
    assert services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_dockerfiles_lint_clean_and_install_with_the_readme_script():
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        path = Path(REPO) / "docker" / name
        lint = subprocess.run([str(BIN / "hadolint"), str(path)], capture_output=True, text=True, timeout=120)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert "RUN cluster/setup_env.sh" in path.read_text()
    scripts = [LAUNCH / "ray-node.sh", LAUNCH / "slurm.sbatch", *Path(REPO, "cluster").glob("*.sh")]
    check = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((LAUNCH / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert all("ray-node.sh" in command for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]
    broken = {**config, "head_start_ray_commands": "ray start --head"}  # a string where Ray wants a list
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_rayjob_manifest_validates_against_the_kuberay_crd_schema():
    schema = json.loads((Path(REPO) / "tests" / "schemas" / "kuberay-rayjob-v1.json").read_text())
    manifest = yaml.safe_load((LAUNCH / "kuberay-rayjob.yaml").read_text())
    jsonschema.validate(manifest, schema)
    assert manifest["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    assert manifest["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "none"  # not a mode KubeRay knows
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
