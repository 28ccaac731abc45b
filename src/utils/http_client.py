"""HTTP helpers shared by everything that talks to a server (OpenAI-compatible providers, the Hub downloader)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

import httpx


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, the default port filled in: two URLs are the same server only when these
    are equal (a redirect or a "next page" link to another origin is another server's say-so)."""
    parsed = httpx.URL(url)
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme, 0)
    return parsed.scheme, (parsed.host or "").lower(), port


def direct_mounts_for(url: httpx.URL, trust_env: bool) -> dict[str, httpx.BaseTransport | None] | None:
    """httpx does not bypass environment proxies for loopback by itself; a system proxy must never intercept a
    server on this machine. ``None`` as a mount value means the client's own direct transport."""
    host = url.host
    if not trust_env or not is_loopback(host):
        return None
    return {f"all://[{host}]" if ":" in host else f"all://{host}": None}


class SocketInterrupter:
    """Shuts down one request's socket from any thread, even before the response has started.

    ``shutdown`` (unlike ``close``) wakes a thread blocked in ``recv`` on that socket and sends the server a FIN.
    The lock makes shutdown and ``detach`` exclusive, so a socket the reading thread has already closed (whose
    descriptor number the OS may have reused) is never touched. Pass ``trace`` as the request's httpcore ``trace``
    extension, and ``attach_stream(response.extensions.get("network_stream"))`` once the response is there.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False

    @property
    def fired(self) -> bool:
        return self._fired

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore ``trace`` extension: capture the socket as soon as it is connected."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.attach_stream(info.get("return_value"))

    def attach_stream(self, network_stream: Any) -> None:
        get_extra_info = getattr(network_stream, "get_extra_info", None)
        sock = get_extra_info("socket") if get_extra_info is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sock = sock
            if self._fired:
                self._shutdown(sock)

    def attach_socket(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self._fired:
                self._shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            if self._sock is not None:
                self._shutdown(self._sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            # The plain socket method, not ssl.SSLSocket.shutdown: that one also drops the TLS object that the
            # reading thread is using at this very moment.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing left to interrupt
