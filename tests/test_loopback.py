"""The Host and Origin rules of Hearth's local listeners (src/utils/loopback.py), value by value. The listeners
themselves are attacked over real sockets in tests/security/test_api_listener.py and test_web_gui_listener.py."""

from __future__ import annotations

import pytest

from src.utils.loopback import host_is_this_listener, origin_is_this_listener


@pytest.mark.parametrize("host", ["127.0.0.1:8550", "localhost:8550", "LocalHost:8550", "[::1]:8550", "127.0.0.2:8550"])
def test_loopback_names_with_the_port_pass(host: str) -> None:
    assert host_is_this_listener(host, 8550)


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.1:80", "rebind.example:8550", "localhost.:8550", "127.0.0.1.nip.io:8550",
    "127.0.0.1:8550@evil.example", "evil.example#@127.0.0.1:8550", "127.0.0.1:8550/x", "127.1:8550", "0.0.0.0:8550",
    "[::ffff:7f00:1]:8550", "127.0.0.1:99999", "127.0.0.1:port", "", "\0repeated",
])  # fmt: skip
def test_anything_else_is_refused(host: str) -> None:
    assert not host_is_this_listener(host, 8550)


def test_port_80_may_be_left_out() -> None:
    assert host_is_this_listener("localhost", 80) and not host_is_this_listener("localhost", 8080)


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://127.0.0.1:8550", True), ("http://localhost:8550", True), ("http://[::1]:8550", True),
    ("http://127.0.0.1:8551", False), ("https://evil.example", False), ("null", False), ("file://", False),
    ("http://rebind.example:8550", False), ("http://127.0.0.1:8550/path", False), ("", False),
])  # fmt: skip
def test_only_the_listeners_own_origin_is_its_own(origin: str, allowed: bool) -> None:
    assert origin_is_this_listener(origin, 8550) is allowed
