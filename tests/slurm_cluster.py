"""A real single-node Slurm for tests: Debian's slurm-wlm and munge (installed with apt-get when missing and the
test runs as root), a munged, a slurmctld and a slurmd on this machine, configured in a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from learner.rendezvous import free_port

PACKAGES = ["slurm-wlm", "munge"]


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("sbatch", "slurmctld", "slurmd", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"needs Debian's {' and '.join(PACKAGES)} (apt-get install {' '.join(PACKAGES)}), or root to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env, check=True,
                   capture_output=True, timeout=900)


@dataclass
class SlurmCluster:
    folder: Path
    env: dict[str, str]  # SLURM_CONF pointing at this cluster
    daemons: list[subprocess.Popen]

    def run(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env={**self.env, **kwargs.pop("env", {})}, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_slurm() -> SlurmCluster:
    """Slurm in a fresh folder under /tmp: pytest's own temp folders are closed to the munge user."""
    ensure_installed()
    folder = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    node = socket.gethostname().split(".")[0]
    folder.chmod(0o755)  # munged runs as the munge user and must reach its folder
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.chown(folder / "munge", "munge", "munge")
    munge_socket = folder / "munge" / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(f"""\
ClusterName=motif-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'slurmctld.log'}
SlurmdLogFile={folder / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground", f"--socket={munge_socket}",
                                 f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--seed-file={folder / 'munge' / 'seed'}",
                                 f"--log-file={folder / 'munge' / 'munged.log'}"],
                                stdout=(folder / "munged.out").open("w"), stderr=subprocess.STDOUT)]
    cluster = SlurmCluster(folder, env, daemons)
    try:
        wait_for(lambda: munge_socket.exists(), "munged", folder / "munged.out", daemons)
        daemons.append(subprocess.Popen(["slurmctld", "-D"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        daemons.append(subprocess.Popen(["slurmd", "-D", "-N", node], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T").stdout, "an idle Slurm node",
                 folder / "slurmctld.log", daemons)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for(ready, what: str, log: Path, daemons: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} did not come up within {timeout:g} s; {log}:\n{tail}")
        time.sleep(1)
