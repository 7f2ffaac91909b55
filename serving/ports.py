"""A free TCP port on the loopback interface, for servers this process starts itself."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just gave out; whoever binds it next should bind it soon."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
