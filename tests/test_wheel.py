"""Installed as users install: the wheel carries the shipped datasets, configs and launch scripts and builds
without setuptools warnings; `motif` installed from it runs from any directory (`--config demo` by name, the
run folder in the working directory, built models in the per-user cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config, resolve_config, shipped_configs
from cluster.cache import cache_dir
from tests.conftest import REPO

# Not the project's sources: what a checkout holds besides them (and what a build writes).
UNSHIPPED = (".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.whl")


def checkout_paths() -> set[Path]:
    """Every path in the checkout but the virtualenv, git's folder and caches."""
    found = set()
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".venv", ".git", "__pycache__", ".pytest_cache")]
        found.update(Path(folder, name) for name in dirs + files)
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, built with pip from a copy of the sources (a build in place would write build/ into the
    checkout), offline: no build isolation (setuptools is in the venv: torch and tensorboard require it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    (built,) = (tmp / "dist").glob("motif_rl-*.whl")
    return built, output


def test_wheel_builds_without_warnings_and_carries_the_shipped_files(wheel):
    built, output = wheel
    assert "would be ignored" not in output and "Warning" not in output, output[-4000:]
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    for name in shipped_configs():
        assert f"cluster/configs/{name}.yaml" in names
    assert "cluster/configs/demo.yaml" in names
    for dataset in ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math500/test.jsonl", "aime24/test.jsonl", "README.md"):
        assert f"cluster/tasks/datasets/{dataset}" in names
    launch = {p.name for p in (Path(REPO) / "cluster" / "launch").iterdir()}
    assert launch >= {"ray-node.sh", "slurm.sbatch", "ray-cluster.yaml", "kuberay-rayjob.yaml"}
    for name in launch:
        assert f"cluster/launch/{name}" in names
    for script in ("ray-node.sh", "slurm.sbatch"):
        assert modes[f"cluster/launch/{script}"] & 0o111, f"{script} lost its executable bit"
    assert "cluster/constraints-cpu.txt" in names
    assert not any(n.startswith(("tests/", "docker/")) for n in names)


def test_installed_motif_evaluates_from_any_directory(wheel, tmp_path):
    """A fresh venv with the wheel installed (dependencies seen through a .pth to this venv's site-packages, so
    torch and vLLM are not installed again; not this venv's editable motif-rl, whose finder only a site dir's
    own .pth installs), then `motif eval --config demo` from a folder outside the checkout."""
    built, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Installed before the .pth exists: pip then sees an empty environment, never this venv's motif-rl.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "-q", str(built)], check=True, timeout=120)
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(fresh_site, "motif-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))

    work = tmp_path / "elsewhere"
    work.mkdir()
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MOTIF_CACHE=str(cache))

    def run(*argv, timeout=300):
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(str(python), "-c", "import cluster, rollout, learner, rewards; "
                "print(*(m.__file__ for m in (cluster, rollout, learner, rewards)), sep='\\n')")
    assert where.returncode == 0, where.stderr[-4000:]
    for module_file in where.stdout.split():
        assert Path(module_file).is_relative_to(venv), f"imported from outside the fresh venv: {module_file}"
    motif = str(venv / "bin" / "motif")
    paths = run(motif, "paths", "launch")
    assert paths.returncode == 0, paths.stderr
    assert Path(paths.stdout.strip(), "ray-node.sh").is_file() and Path(paths.stdout.strip()).is_relative_to(venv)

    unknown = run(motif, "eval", "--config", "no-such-config")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "motif: invalid config: no config file 'no-such-config' and no shipped config named 'no-such-config' "
        f"(shipped: {', '.join(shipped_configs())})"]

    before = checkout_paths()
    proc = run(motif, "eval", "--config", "demo", "model.path=tiny", "eval.path=gsm8k", "eval.limit=2", "eval.n=1",
               "eval.rounds=1", "eval.max_tokens=8", "rollout.kv_cache_mb=32")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((work / "runs" / "demo" / "eval" / "summary.json").read_text())
    assert summary["dataset"] == "gsm8k" and summary["questions"] == 2 and summary["n"] == 1
    # The run folder is relative to the working directory; the tiny model went to the user's cache.
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert list(cache.glob("tiny-model-*/config.json"))
    # (New sources are someone editing the checkout meanwhile; motif writes none.)
    created = sorted(str(p) for p in checkout_paths() - before if p.suffix not in (".py", ".md"))
    assert not created, f"the installed motif wrote into the checkout: {created[:10]}"


def test_config_by_name_path_first(tmp_path, monkeypatch):
    assert resolve_config("demo") == resolve_config("demo.yaml") == Path(REPO) / "cluster" / "configs" / "demo.yaml"
    assert load_config("demo", ["model.path=tiny"]).steps == load_config(resolve_config("demo")).steps
    monkeypatch.chdir(tmp_path)
    Path("demo").write_text("steps: 7\n")  # a file that exists wins over the shipped name
    assert load_config("demo").steps == 7
    with pytest.raises(ConfigError, match=r"config file not found: sub/demo.yaml \(shipped configs, by name: demo"):
        load_config("sub/demo.yaml")


def test_model_cache_is_per_user_not_per_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MOTIF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == (tmp_path / "xdg" / "motif-rl").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == (tmp_path / "home" / ".cache" / "motif-rl").resolve()
    monkeypatch.setenv("MOTIF_CACHE", str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == (tmp_path / "mine").resolve()
    config = load_config("demo")
    assert config.model.tiny_model_dir is None and config.model.warm_start.dir is None
