"""What Hearth's own listeners on 127.0.0.1 accept: requests meant for them, from their own pages only.

Every web page the user has open can send requests to 127.0.0.1. Three things keep such a page from driving a
listener (``LoopbackGuard``, an ASGI middleware for HTTP and WebSocket alike):

* **Host**: a page on ``evil.example`` whose name is then made to resolve to 127.0.0.1 (DNS rebinding) reaches the
  listener with ``Host: evil.example``, and as the same origin, so the browser lets it read the answers. Only a
  loopback name or address (``127.0.0.1``, ``localhost``, ``[::1]``, any 127/8) with the listener's own port passes
  (421 otherwise).
* **Origin**: a page on another origin is refused (403) when its request says where it comes from, as every
  WebSocket handshake and every cross-site POST does, unless that origin is allowed by name (``--cors-origin``).
  The listener's own origin always passes.
* **Token** (the web GUI): a random key made at each launch, in the link Hearth prints and opens, as Jupyter does.
  The first request brings it in the query (``?token=``); the answer puts it in a cookie (HttpOnly, SameSite=Strict)
  and sends the browser to the same address without it, so the key leaves the address bar. Without the key or the
  cookie nothing is served (403), not even a static file: the port is easy to guess, the key is not.

For pages (``for_pages``, the web GUI) any ``Access-Control-Allow-*`` header is removed from the answers (Flet's web
server sends ``Access-Control-Allow-Origin: *`` on everything, which would let any site read them), and framing is
forbidden (``X-Frame-Options``, ``frame-ancestors``). The cookie itself reaches every server on 127.0.0.1 (cookies
know hosts, not ports): a program listening there could read it, as it could read the printed link.
"""

from __future__ import annotations

import hmac
import logging
import signal
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.errors import ServerStartError
from src.utils.http_client import is_loopback

logger = logging.getLogger(__name__)

TOKEN_PARAMETER = "token"
_COOKIE_PREFIX = "hearth-token-"  # one per port: cookies are shared by every port of a host
_HTTP_DEFAULT_PORT = 80

# (status, code, message) -> the ASGI response that refuses (HTTP requests only: a WebSocket is closed instead)
Refusal = Callable[[int, str, str], ASGIApp]


def is_loopback_host(host: str) -> bool:
    """``localhost``, or an address in 127.0.0.0/8 or ``::1`` (brackets allowed). Unlike for an outgoing connection
    (``http_client.is_loopback``), not ``*.localhost``: which names a resolver sends to 127.0.0.1 is its own say."""
    host = host.strip().strip("[]").lower()
    return not host.endswith(".localhost") and is_loopback(host)


def host_is_this_listener(host_header: str, port: int) -> bool:
    """The ``Host`` header names a loopback host and the listener's ``port``."""
    try:
        parts = urllib.parse.urlsplit("//" + host_header)
        named_port = parts.port
    except ValueError:  # a port out of range, or not a number
        return False
    if not parts.hostname or parts.username is not None or parts.path or parts.query:
        return False
    return is_loopback_host(parts.hostname) and (named_port or _HTTP_DEFAULT_PORT) == port


def origin_is_this_listener(origin: str, port: int) -> bool:
    try:
        parts = urllib.parse.urlsplit(origin)
        named_port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "ws")
        and bool(parts.hostname)
        and is_loopback_host(parts.hostname or "")
        and (named_port or _HTTP_DEFAULT_PORT) == port
        and parts.path in ("", "/")
    )


def text_refusal(status: int, code: str, message: str) -> ASGIApp:
    return _plain_response(status, message.encode(), b"text/plain; charset=utf-8")


def _plain_response(status: int, body: bytes, content_type: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> ASGIApp:
    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers,
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return respond


class LoopbackGuard:
    """The checks of the module docstring in front of ``app``. ``allowed_origins`` are origins allowed besides the
    listener's own (``"*"``: any origin, the user's explicit choice); ``token`` turns the key check on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: Sequence[str] = (),
        token: str | None = None,
        for_pages: bool = False,
        refusal: Refusal | None = None,
    ) -> None:
        self.app = app
        self._origins = {origin.rstrip("/") for origin in allowed_origins}
        self._token = token.encode() if token else None
        self._for_pages = for_pages
        self._refusal = refusal or text_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        answer = self._answer_instead(scope)
        if answer is not None:
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, self._page_headers(send) if self._for_pages else send)

    def _answer_instead(self, scope: Scope) -> ASGIApp | None:
        """None when the request may go on to the app; else what to answer: a refusal, or the token's redirect."""
        port = _listener_port(scope)
        headers = _headers(scope)
        if not host_is_this_listener(headers.get("host", ""), port):
            return self._refuse(scope, 421, "host_not_allowed", f"This server answers only requests for "
                                f"127.0.0.1:{port} or localhost:{port}, not for {headers.get('host', '')[:100]!r}.")  # fmt: skip
        if "origin" in headers and not self._origin_allowed(headers["origin"], port):
            return self._refuse(scope, 403, "origin_not_allowed",
                                f"Requests from the web page {headers['origin'][:100]!r} are not allowed here.")  # fmt: skip
        if self._token is None:
            return None
        cookie_name = f"{_COOKIE_PREFIX}{port}"
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = next((value for name, value in query if name == TOKEN_PARAMETER), None)
        if given is not None and hmac.compare_digest(given.encode(), self._token):
            if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
                # Into a cookie, and out of the address bar (and the history, and what a screenshot shows).
                rest = urllib.parse.urlencode([(n, v) for n, v in query if n != TOKEN_PARAMETER])
                # One leading slash, the rest percent-encoded: "//evil.example" or "/\\evil" would leave the site.
                path = "/" + urllib.parse.quote(scope.get("path", "/").lstrip("/\\"), safe="/")
                location = path + (f"?{rest}" if rest else "")
                cookie = f"{cookie_name}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
                return _plain_response(303, b"", b"text/plain", [
                    (b"location", location.encode()), (b"set-cookie", cookie.encode()), (b"cache-control", b"no-store"),
                ])  # fmt: skip
            return None
        if hmac.compare_digest(_cookie(headers.get("cookie", ""), cookie_name).encode(), self._token):
            return None
        return self._refuse(scope, 403, "token_required", "Open Hearth with the link it printed when it started: "
                            "the link carries a key that this page was opened without (so that no web site can open "
                            "Hearth).")  # fmt: skip

    def _refuse(self, scope: Scope, status: int, code: str, message: str) -> ASGIApp:
        logger.warning("Refused %s %s: %s", scope["type"], scope.get("path"), code)
        if scope["type"] == "websocket":
            return _close_websocket
        return self._refusal(status, code, message)

    def _origin_allowed(self, origin: str, port: int) -> bool:
        return "*" in self._origins or origin.rstrip("/") in self._origins or origin_is_this_listener(origin, port)

    @staticmethod
    def _page_headers(send: Send) -> Send:
        async def send_as_page(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if not name.lower().startswith(b"access-control-allow-")]  # fmt: skip
                message = {**message, "headers": [*headers, *_NEVER_FRAMED]}
            await send(message)

        return send_as_page


# A page on another port of 127.0.0.1 is "same-site": it could frame the app, with the cookie, and have the user click
# in it (clickjacking). No one may frame it.
_NEVER_FRAMED = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))


async def _close_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.close", "code": 1008})  # before the accept: the handshake gets HTTP 403


def _listener_port(scope: Scope) -> int:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else _HTTP_DEFAULT_PORT


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; a repeated Host or Origin counts as none that passes."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name not in found:
            found[name] = value
        else:  # two Hosts or two Origins: which one would the app read? Neither passes.
            found[name] = "\0repeated" if name in ("host", "origin") else f"{found[name]}; {value}"
    return found


def _cookie(header: str, name: str) -> str:
    """The value of cookie ``name``, read by hand: every server on 127.0.0.1 shares the cookies of this host, and
    SimpleCookie drops the whole header for one malformed cookie another local app set."""
    for piece in header.split(";"):
        key, separator, value = piece.strip().partition("=")
        if separator and key.strip() == name:
            return value.strip().strip('"')
    return ""


# --- serving ---------------------------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); ``ServerStartError`` when that is impossible (port in use...). Bound
    before uvicorn starts, so that a port in use is said at once and port 0 is a free port known in advance."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerStartError(host, port, f"unknown host ({exc})") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServerStartError(host, port, exc.strerror or str(exc)) from exc
    sock.set_inheritable(True)
    return sock


def serve_in_foreground(app: ASGIApp, sock: socket.socket, *, on_exit_signal: Callable[[], None] | None = None,
                        **uvicorn_options: Any) -> None:  # fmt: skip
    """Serve ``app`` on ``sock`` in the calling (main) thread until Ctrl+C or SIGTERM, then return normally, so that
    Hearth's own shutdown runs after (src/utils/shutdown.py). ``on_exit_signal`` runs in a thread of its own when the
    signal comes (not in the handler: it interrupts the event loop, which may hold a lock the callback needs)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if on_exit_signal is not None:
                threading.Thread(target=on_exit_signal, name="hearth-server-stop", daemon=True).start()

    # X-Forwarded-* from 127.0.0.1 is trusted by default; any local page or program could send it.
    server = _Server(uvicorn.Config(app, proxy_headers=False, **uvicorn_options))
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully. With SIGTERM's default action
    # that killed the process there and then, before Hearth's own shutdown (stop the model, free it) could run. A
    # SIGTERM'd server that has shut down ends normally, with exit code 0.
    sigterm_handler = _take_replayed_sigterm()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if sigterm_handler is not None:
            signal.signal(signal.SIGTERM, sigterm_handler)


def _take_replayed_sigterm() -> Any:
    """In the main thread, make SIGTERM a no-op for uvicorn's replay of it; return the handler to restore."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: None)
