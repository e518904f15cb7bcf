"""A real Ray head for tests, started as a user starts one (`ray start --head`): its own temp dir, loopback
only, token authentication on. Stopped by killing only its own processes: `ray stop` would kill every Ray on
the machine, the test session's own included."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from learner.rendezvous import free_port

BIN = Path(sys.executable).parent


def processes_using(temp_dir: Path) -> list[psutil.Process]:
    """The processes of the Ray started with `temp_dir`: it is in their command line or among their open files
    (Ray's helper processes rename themselves)."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(temp_dir) in " ".join(p.info["cmdline"] or []) or any(
                    f.path.startswith(str(temp_dir)) for f in p.open_files()):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return mine


@dataclass
class RayHead:
    temp_dir: Path
    dashboard: str  # the job API: http://127.0.0.1:PORT
    env: dict[str, str]  # a client's environment: the token and the tools on PATH

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list[psutil.Process]:
        return processes_using(self.temp_dir)

    def stop(self) -> None:
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=10)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(num_cpus: int = 4) -> RayHead:
    # Short: Ray's socket paths under the temp dir must fit in 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    dashboard_port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    head = RayHead(temp_dir, f"http://127.0.0.1:{dashboard_port}", env)
    started = head.cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
                       # the test session's own Ray may hold the default job-agent port; without an agent the
                       # head answers every submission with "No available agent"
                       f"--dashboard-agent-listen-port={free_port()}",
                       f"--num-cpus={num_cpus}", "--disable-usage-stats", timeout=180)
    if started.returncode != 0:
        head.stop()
        raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    deadline = time.monotonic() + 60
    while head.cli("job", "list", "--address", head.dashboard, timeout=60).returncode != 0:
        if time.monotonic() > deadline:
            head.stop()
            raise RuntimeError("the head's job API did not come up within 60 s")
        time.sleep(2)
    return head
