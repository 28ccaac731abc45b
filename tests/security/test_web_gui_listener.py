"""The web GUI (``main.py --web``) attacked the way a web page the user has open can attack it.

A real Hearth is started (its printed link carries the launch's key); raw HTTP requests and WebSocket handshakes
then come with the headers a hostile page would have: a foreign ``Origin``, a rebound ``Host``, no key. The app
opened through its own link keeps working in Chromium: that is the whole e2e suite (tests/e2e)."""

from __future__ import annotations

import base64
import os
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import AppServer


@pytest.fixture(scope="module")
def hearth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    data = tmp_path_factory.mktemp("web-gui-data")
    server = AppServer(env={"HEARTH_DATA_DIR": str(data)}, log_path=Path(data) / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


def token_of(server: AppServer) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(server.url).query)
    return query["token"][0]


def request(server: AppServer, lines: list[str]) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
        answer = b""
        while chunk := connection.recv(65536):  # Connection: close: to the end
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def websocket_handshake(server: AppServer, *, origin: str | None, cookie: str | None, host: str | None = None,
                        path: str = "/ws") -> int:  # fmt: skip
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{server.port}'}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
             "Sec-WebSocket-Version: 13"]  # fmt: skip
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(("\r\n".join([*lines, "", ""])).encode())
        status_line = connection.recv(65536).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def own(server: AppServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def the_cookie(server: AppServer) -> str:
    return f"hearth-token-{server.port}={token_of(server)}"


def test_the_printed_link_carries_a_key_that_becomes_a_cookie(hearth: AppServer) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token_of(hearth))  # 32 random bytes
    status, headers, _ = request(hearth, [f"GET /?token={token_of(hearth)} HTTP/1.1", f"Host: 127.0.0.1:{hearth.port}"])
    assert status == 303 and headers["location"] == "/"  # the key leaves the address bar
    assert headers["set-cookie"].startswith(the_cookie(hearth)) and "HttpOnly" in headers["set-cookie"]
    assert "SameSite=Strict" in headers["set-cookie"]
    status, headers, body = request(hearth, ["GET / HTTP/1.1", f"Host: 127.0.0.1:{hearth.port}", f"Cookie: {the_cookie(hearth)}"])
    assert status == 200 and b"flutter" in body.lower()
    assert "access-control-allow-origin" not in headers  # Flet's "*" is taken off
    assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers["content-security-policy"]


def test_the_keys_redirect_stays_on_this_site(hearth: AppServer) -> None:
    for path, expected in (("//evil.example", "/evil.example"), ("/%5Cevil.example", "/evil.example"),
                           ("/settings", "/settings")):  # fmt: skip
        status, headers, _ = request(hearth, [f"GET {path}?token={token_of(hearth)} HTTP/1.1",
                                              f"Host: 127.0.0.1:{hearth.port}"])  # fmt: skip
        assert status == 303 and headers["location"] == expected, (path, headers.get("location"))


def test_another_local_apps_odd_cookie_does_not_lock_the_user_out(hearth: AppServer) -> None:
    cookies = f'x={{"a": 1}}; other="unclosed; {the_cookie(hearth)}'  # cookies are shared by every port of a host
    status, _, _ = request(hearth, ["GET / HTTP/1.1", f"Host: 127.0.0.1:{hearth.port}", f"Cookie: {cookies}"])
    assert status == 200


def test_without_the_key_nothing_is_served(hearth: AppServer) -> None:
    for path in ("/", "/main.dart.js", "/fonts/WenQuanYiMicroHei.ttf", "/?token=guessed"):
        status, _, _ = request(hearth, [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{hearth.port}"])
        assert status == 403, path
    status, _, _ = request(hearth, ["GET / HTTP/1.1", f"Host: 127.0.0.1:{hearth.port}", f"Cookie: hearth-token-{hearth.port}=guessed"])
    assert status == 403


def test_a_rebound_host_is_refused_even_with_the_key(hearth: AppServer) -> None:
    status, _, _ = request(hearth, ["GET / HTTP/1.1", f"Host: rebind.example:{hearth.port}", f"Cookie: {the_cookie(hearth)}"])
    assert status == 421
    assert websocket_handshake(hearth, origin=f"http://rebind.example:{hearth.port}", cookie=the_cookie(hearth),
                               host=f"rebind.example:{hearth.port}") == 403  # fmt: skip


def test_a_foreign_page_cannot_open_the_apps_websocket(hearth: AppServer) -> None:
    assert websocket_handshake(hearth, origin="http://evil.example", cookie=the_cookie(hearth)) == 403
    assert websocket_handshake(hearth, origin="null", cookie=the_cookie(hearth)) == 403  # a sandboxed iframe
    assert websocket_handshake(hearth, origin=own(hearth), cookie=None) == 403  # no key
    assert websocket_handshake(hearth, origin=own(hearth), cookie=the_cookie(hearth)) == 101  # the app itself


# --- which server runs, and how the browser is sent to it ----------------------------------------------------------


@pytest.mark.parametrize(("environment", "expected"), [
    ({"WAYLAND_DISPLAY": "wayland-0"}, "web"),  # Flet would serve its own unguarded web server here
    ({"DISPLAY": ":0", "FLET_FORCE_WEB_SERVER": "1"}, "web"),
    ({"DISPLAY": ":0"}, "window"),
])  # fmt: skip
def test_whenever_flet_would_serve_a_browser_hearth_serves_it(monkeypatch: pytest.MonkeyPatch,
                                                              environment: dict[str, str], expected: str) -> None:  # fmt: skip
    import flet as ft

    from src.ui import app, desktop

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "FLET_FORCE_WEB_SERVER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(desktop, "desktop_unavailable_reason", lambda: None)  # a desktop client on disk
    monkeypatch.setattr("sys.platform", "linux")
    view = app.choose_view(web=False)
    assert view == (ft.AppView.WEB_BROWSER if expected == "web" else ft.AppView.FLET_APP)


def test_the_browser_is_opened_on_a_private_page_not_on_the_key(tmp_path: Path) -> None:
    from src.ui.web import opening_page

    url = "http://127.0.0.1:8550/?token=SECRET-KEY"
    page = opening_page(tmp_path, url)
    assert "SECRET" not in page.as_uri()  # what goes on the browser's command line, visible to every user
    assert page.stat().st_mode & 0o777 == 0o600
    assert 'content="0;url=http://127.0.0.1:8550/?token=SECRET-KEY"' in page.read_text()
