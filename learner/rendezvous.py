"""Where the ranks of a learner group meet, and which interface their collectives use."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import tempfile
import uuid


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on the address it will be served at."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_address(node_ip: str) -> str:
    """Where the ranks of one learner group meet. Ranks on one machine meet in a file (torch's FileStore): no
    rendezvous server listens on the network. Across machines, rank 0's node serves one on a free port."""
    if ipaddress.ip_address(node_ip).is_loopback:
        return f"file://{tempfile.gettempdir()}/motif-rendezvous-{uuid.uuid4().hex}"
    return f"{node_ip}:{free_port(node_ip)}"


def tcp_store(address: str, rank: int, world_size: int, timeout_s: float = 600.0):
    """torch's TCPStore for ranks on several machines, served by rank 0 on `address` ("host:port") only. torch
    binds its server to every interface and has no option to choose one, but serves an already bound socket
    (`master_listen_fd`): rank 0 binds it here, so peers reach it on the address they were given, and nothing
    else on the machine's other networks does."""
    from torch.distributed import TCPStore

    host, port = address.rsplit(":", 1)
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        return TCPStore(host, int(port), world_size, is_master=False, timeout=timeout)
    listener = socket.create_server((host, int(port)), backlog=max(128, world_size))
    # detach(): the store owns the descriptor from here; the socket object must not close it when collected.
    return TCPStore(host, int(port), world_size, is_master=True, timeout=timeout, wait_for_workers=False,
                    master_listen_fd=listener.detach())


def interface_of(ip: str) -> str | None:
    """The network interface that holds IPv4 address `ip` (Linux). gloo otherwise binds the address the host
    name resolves to, which is often loopback, and ranks on other nodes cannot connect to it. The standard
    library has no address list per interface, hence the ioctl (SIOCGIFADDR) rather than a new dependency."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
    return None
