"""Closed by default: every socket a local `motif train` listens on is on loopback, or refuses a caller without
Ray's token."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import psutil

from tests.conftest import REPO

# One method of each Ray gRPC service that can listen beside the loopback: asked without a token, a protected
# server answers UNAUTHENTICATED; one that does not serve the method answers UNIMPLEMENTED.
RAY_GRPC_METHODS = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.NodeManagerService/GetNodeStats",
                    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats")


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def refuses_without_token(port: int) -> bool:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in RAY_GRPC_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=5)
                return False
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return True
    return False


def listening(pids: set[int]) -> set[tuple[str, int, int]]:
    return {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def command_lines(root: int) -> dict[int, str]:
    """The start of each live process's command line in the tree under `root`; one that exits (or is a zombie
    not yet reaped) while it is read is left out."""
    found = {}
    for p in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            found[p.pid] = " ".join(p.cmdline()[:2])[:100]
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def test_a_local_run_listens_on_loopback_or_behind_the_token(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the CLI itself must close the local Ray
    driver = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "train", "--config", "tests/configs/smoke.yaml", "steps=2",
         f"output_dir={run_dir}", f"model.tiny_model_dir={tmp_path / 'tiny'}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sockets: set[tuple[str, int, int]] = set()
    names: dict[int, str] = {}
    try:
        # Sample the run's sockets until it has trained a step: by then the GCS, raylet, agents, the rollout
        # worker and the learner all listen.
        deadline = time.monotonic() + 600
        while driver.poll() is None and time.monotonic() < deadline:
            names.update(command_lines(driver.pid))
            sockets |= listening(set(names))
            if (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text():
                break
            time.sleep(1)
        exposed = [(host, port, names[pid]) for host, port, pid in sockets if not is_loopback(host)]
        unprotected = [s for s in exposed if not refuses_without_token(s[1])]
    finally:
        output = driver.communicate(timeout=600)[0]
    assert driver.returncode == 0, output[-3000:]
    assert len(sockets) >= 5, sockets  # GCS, raylet, agents, workers: the sampling saw the cluster
    assert not unprotected, f"listening beyond loopback without Ray's token: {unprotected}"


def test_the_cross_machine_rendezvous_listens_only_on_its_address():
    """Every 127.x address reaches a socket bound to all interfaces; one bound to 127.0.0.1 refuses 127.0.0.2.
    torch's own TCPStore server accepts there (the oracle that the probe can see the difference)."""
    import datetime
    import socket

    from torch.distributed import TCPStore

    from learner.rendezvous import free_port, tcp_store

    def accepts(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            return False

    plain_port = free_port()
    plain = TCPStore("127.0.0.1", plain_port, 1, is_master=True, timeout=datetime.timedelta(seconds=10))
    assert accepts("127.0.0.2", plain_port)

    port = free_port()
    address = f"127.0.0.1:{port}"
    server = tcp_store(address, rank=0, world_size=2, timeout_s=10)
    peer = tcp_store(address, rank=1, world_size=2, timeout_s=10)
    server.set("version", "7")
    assert peer.get("version") == b"7"  # the ranks meet through it
    assert accepts("127.0.0.1", port) and not accepts("127.0.0.2", port)
    del plain, server, peer
