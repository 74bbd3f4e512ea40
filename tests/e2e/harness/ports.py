"""Free ports, for programs that cannot be told to pick their own (port 0): a shell
script, a container on the host network.

Ports are drawn at random from outside the kernel's ephemeral range: every program
that binds port 0 or opens a connection takes its port from that range, so a port
chosen there may be gone by the time it is used (seconds later, for a container).
Outside it, only another program choosing fixed ports can collide.
"""

import random
import socket
from pathlib import Path


def _ephemeral_range():
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _candidates():
    low, high = _ephemeral_range()
    # Below the range, clear of the well-known ports and of the demo's fixed ones
    # (8080, 8443, 9901, 15xxx-19xxx); above it when the range starts too low.
    if low > 21000:
        return range(20000, low)
    return range(high + 1, 65536)


def free_ports(count: int) -> list:
    """`count` distinct ports nobody holds on 127.0.0.1 right now."""
    chosen = []
    candidates = list(_candidates())
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"fewer than {count} free ports outside the ephemeral range")
