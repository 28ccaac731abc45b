"""Port selection for web mode."""

from __future__ import annotations

import socket

DEFAULT_WEB_PORT = 8550


def pick_port(host: str, port: int) -> int:
    """The asked port; with 0, the default port if free, else any free one (so two Hearths can run)."""
    if port:
        return port
    for candidate in (DEFAULT_WEB_PORT, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")
