"""A minimal GET for large bodies over the standard library's http.client: the body is read with ``readinto``
into one reused buffer, straight from the socket.

Why not httpx for this part: its per-chunk parsing and allocations capped a model download at about half of what
curl reaches on the same loopback server. Metadata (small JSON) still goes through httpx in ``hub_api``.
Honours the usual proxy variables (HTTP(S)_PROXY, NO_PROXY) except for loopback hosts, and exposes the socket as
soon as it is connected, so a pause from another thread can shut it down at once (see ``SocketInterrupter``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from src.utils.http_client import is_loopback

_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


@dataclass
class RawResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: http.client.HTTPResponse

    def read_chunks(self, buffer_size: int = 1 << 20) -> Iterator[memoryview]:
        """Yield views of one reused buffer: copy (``bytes(view)``) before keeping a chunk."""
        buffer = bytearray(buffer_size)
        view = memoryview(buffer)
        while True:
            n = self.body.readinto(view)
            if not n:
                return
            yield view[:n]


@contextmanager
def get(
    url: str,
    headers: Mapping[str, str],
    *,
    timeout: float,
    on_socket: Callable[[socket.socket], None] | None = None,
) -> Iterator[RawResponse]:
    """``GET url`` without following redirects (the caller decides where the token may go next)."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = None if is_loopback(host) or urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    if proxy:
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        proxy_host, proxy_port = proxy_parts.hostname or "", proxy_parts.port or 80
        if secure:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                proxy_host, proxy_port, timeout=timeout, context=_ssl_context()
            )
            connection.set_tunnel(host, port)
        else:
            connection = http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout)
            target = url  # plain HTTP through a proxy: the absolute URL is the request target
    elif secure:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_ssl_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.connect()
        if on_socket is not None and connection.sock is not None:
            on_socket(connection.sock)
        connection.request("GET", target, headers=dict(headers))
        response = connection.getresponse()
        yield RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response)
    finally:
        connection.close()
