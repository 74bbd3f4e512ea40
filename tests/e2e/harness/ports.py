"""Free ports, for programs that cannot be told to pick their own (port 0): a shell
script, a container on the host network. There is a short window between choosing
and binding; prefer port 0 wherever the program can report what it got."""

import socket


def free_ports(count: int) -> list:
    """`count` distinct ports nobody holds on 127.0.0.1 right now (bound together,
    then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
