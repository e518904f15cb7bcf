"""A second machine on this one, for tests: two network namespaces joined by a veth pair with a private /30 on
it, a Ray node in each started with `cluster/launch/ray-node.sh` (head and worker, a token of their own).

Root only. Nothing of it is on the host's network: the links live inside the namespaces, every server a node
starts listens there, and all traffic goes between the two namespace addresses (or their loopbacks). A node is
stopped by killing the processes inside its namespace (its network namespace is all this harness made), never
with `ray stop`; `close()` removes the namespaces (and with them the link) and the nodes' temp dirs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY_PORT = 6379  # each namespace has ports of its own: the defaults are free there
DASHBOARD = "http://127.0.0.1:8265"  # the head's job and state API, on the head namespace's loopback


class Unavailable(RuntimeError):
    """This machine cannot make namespaces (not root, or `ip netns add` refused): the test skips."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Namespace:
    name: str
    address: str  # its end of the veth pair
    device: str  # that end's name, inside the namespace

    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino

    def pids(self) -> list[int]:
        """Every process whose network namespace this is (all started here by the harness)."""
        want, found = f"net:[{self.inode()}]", []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == want:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def kill_all(self, timeout_s: float = 30) -> None:
        """SIGKILL every process in the namespace, until none is left (Ray may start a process meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def command(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]


@dataclass
class TwoNodes:
    """Namespaces `head` and `worker`, and once `start_ray` ran, a Ray node in each."""

    head: Namespace
    worker: Namespace
    temp: Path  # the nodes' Ray temp dirs and logs
    env: dict[str, str]  # a client's environment (token, PATH); a node's adds its gloo interface
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    def node_env(self, ns: Namespace) -> dict[str, str]:
        # No GLOO_SOCKET_IFNAME here: each learner rank finds the interface of its node's address itself
        # (learner.actor.interface_of); gloo would otherwise bind 127.0.0.1, the hostname's address here.
        env = dict(self.env)
        if ns is self.head:
            # The GCS declares a node dead after 3 failed health checks 1 s apart (Ray's default: 5, 3 s apart).
            env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
        return env

    def start_ray(self, head_cpus: int, worker_cpus: int, timeout_s: float = 180) -> None:
        self._start(self.head, ["head", f"--node-ip-address={self.head.address}", f"--num-cpus={head_cpus}"],
                    self.head.name, timeout_s)
        self.start_worker(worker_cpus, timeout_s)  # the worker joins a head that is up

    def start_worker(self, worker_cpus: int, timeout_s: float = 180) -> None:
        """The worker node's Ray, again after a test killed it: a new node with its own temp dir and log."""
        name = f"{self.worker.name}-{sum(n.startswith(self.worker.name) for n in self.nodes)}"
        self._start(self.worker, ["worker", self.address, f"--node-ip-address={self.worker.address}",
                                  f"--num-cpus={worker_cpus}"], name, timeout_s)

    def _start(self, ns: Namespace, args: list[str], name: str, timeout_s: float) -> None:
        log = open(self.temp / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            ns.command("bash", str(REPO / "cluster" / "launch" / "ray-node.sh"), *args,
                       "--object-store-memory=200000000", f"--temp-dir={self.temp / name}"),
            env=self.node_env(ns), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self._wait(name, timeout_s)

    def _wait(self, name: str, timeout_s: float) -> None:
        """Until `ray start` says the node runs (a worker says so once the head has registered it)."""
        deadline, log = time.monotonic() + timeout_s, self.temp / f"{name}.log"
        while "Ray runtime started" not in log.read_text():
            if time.monotonic() > deadline or self.nodes[name].poll() is not None:
                raise RuntimeError(f"the Ray node {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def run_in_head(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A client command in the head's namespace (where the driver runs too)."""
        return subprocess.run(self.head.command(*cmd), env=self.env, capture_output=True, text=True, cwd=REPO,
                              timeout=timeout)

    def state(self) -> dict:
        """Ray's state API, asked on the head: each node's address by id, and every actor (dead ones too)."""
        script = (
            "import json; from ray.util.state import list_actors, list_nodes\n"
            f"a = {DASHBOARD!r}\n"
            "print(json.dumps({'nodes': {n.node_id: n.node_ip for n in list_nodes(address=a)},"
            " 'actors': [dict(cls=x.class_name, state=x.state, node=x.node_id, pid=x.pid, job=x.job_id)"
            " for x in list_actors(address=a, limit=10000, detail=True)]}))")
        done = self.run_in_head(sys.executable, "-c", script)
        if done.returncode != 0:
            raise RuntimeError(f"state API: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for ns in (self.worker, self.head):
            try:
                ns.kill_all()
            except FileNotFoundError:
                pass
            _ip("netns", "del", ns.name)  # the veth pair goes with its namespaces
        for p in self.nodes.values():
            p.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def make_two_nodes() -> TwoNodes:
    """Two fresh namespaces (unique names) linked by a veth pair, 10.213.0.1/30 and 10.213.0.2/30 (addresses are
    per namespace, so two test sessions at once do not collide). Raises Unavailable when this machine cannot."""
    if os.geteuid() != 0:
        raise Unavailable("needs root: it creates network namespaces")
    if shutil.which("ip") is None:
        raise Unavailable("needs iproute2's `ip`")
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    head = Namespace(f"motif-{tag}-a", "10.213.0.1", f"mra{tag}"[:15])
    worker = Namespace(f"motif-{tag}-b", "10.213.0.2", f"mrb{tag}"[:15])
    made = _ip("netns", "add", head.name)
    if made.returncode != 0:
        raise Unavailable(f"`ip netns add` refused: {made.stderr.strip()}")
    temp = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 characters
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(PATH=f"{BIN}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               HF_HUB_OFFLINE="1")
    nodes = TwoNodes(head, worker, temp, env)
    try:
        steps = [("netns", "add", worker.name),
                 ("link", "add", head.device, "netns", head.name, "type", "veth", "peer", "name", worker.device,
                  "netns", worker.name)]
        for ns in (head, worker):
            steps += [("-n", ns.name, "addr", "add", f"{ns.address}/30", "dev", ns.device),
                      ("-n", ns.name, "link", "set", "lo", "up"), ("-n", ns.name, "link", "set", ns.device, "up")]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise Unavailable(f"`ip {' '.join(step)}` refused: {done.stderr.strip()}")
    except BaseException:
        nodes.close()
        raise
    return nodes
