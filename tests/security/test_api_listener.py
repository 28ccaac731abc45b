"""The keyless OpenAI-compatible API on 127.0.0.1, attacked the way a web page the user has open can attack it.

A page can reach 127.0.0.1 but cannot choose some headers: under DNS rebinding its requests say ``Host:
rebind.example``; across sites they carry an ``Origin``; a "simple" cross-site POST is ``text/plain``. Each test
drives a real server (uvicorn on a free port) with raw requests and checks the model never ran."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from src.server import ServerController
from src.settings import SERVER_MAX_MESSAGES
from tests.server.conftest import fake_app, running
from tests.server.fakes import KeyedScriptedFakeModel

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def model() -> KeyedScriptedFakeModel:
    return KeyedScriptedFakeModel(default_reply="fine")


@pytest.fixture
def server(model: KeyedScriptedFakeModel) -> Iterator[ServerController]:
    with running(fake_app(model, cors_origins=("http://localhost:3000",))) as controller:
        yield controller


def raw(server: ServerController, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    """One HTTP/1.1 request with exactly these headers (httpx would set Host itself)."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall("\r\n".join(lines).encode() + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def own_host(server: ServerController) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.1:1",
                                  "localhost.:{port}", "0.0.0.0:{port}", ""])  # fmt: skip
def test_a_rebound_host_is_refused(server: ServerController, host: str) -> None:
    for path in ("/v1/models", "/metrics", "/health"):
        status, body = raw(server, "GET", path, {"Host": host.format(port=server.port)})
        assert status == 421, (path, body)
        assert body["error"]["code"] == "host_not_allowed"


def test_the_listeners_own_names_pass(server: ServerController) -> None:
    for host in (own_host(server), f"localhost:{server.port}", f"LOCALHOST:{server.port}"):
        assert raw(server, "GET", "/v1/models", {"Host": host})[0] == 200, host
    assert httpx.get(server.api_base_url + "/models", timeout=10).status_code == 200  # what clients send


def test_two_host_headers_are_refused(server: ServerController) -> None:
    status, _ = raw(server, "GET", "/v1/models", {"Host": own_host(server), "host": "rebind.example"})
    assert status in (400, 421)  # the HTTP parser or the guard: never served


def test_a_foreign_page_cannot_start_a_generation(server: ServerController, model: KeyedScriptedFakeModel) -> None:
    body = json.dumps(CHAT).encode()
    status, answer = raw(server, "POST", "/v1/chat/completions",
                         {"Host": own_host(server), "Origin": "http://evil.example", "Content-Type": "application/json"}, body)  # fmt: skip
    assert status == 403 and answer["error"]["code"] == "origin_not_allowed"
    # A "simple" request (no preflight): text/plain, even from no origin at all
    status, answer = raw(server, "POST", "/v1/chat/completions", {"Host": own_host(server), "Content-Type": "text/plain"}, body)
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    status, _ = raw(server, "POST", "/v1/chat/completions", {"Host": own_host(server)}, body)  # no Content-Type
    assert status == 415
    assert model.started_prompts == []  # the model never ran
    # The origin allowed by --cors-origin, and a client that says JSON, still work
    status, answer = raw(server, "POST", "/v1/chat/completions",
                         {"Host": own_host(server), "Origin": "http://localhost:3000", "Content-Type": "application/json"}, body)  # fmt: skip
    assert status == 200 and answer["choices"][0]["message"]["content"] == "fine"


def test_with_a_key_the_key_is_the_check(model: KeyedScriptedFakeModel) -> None:
    """A server bound to the LAN (which needs a key) is reached under names Hearth cannot know."""
    with running(fake_app(model, api_key="s3cret-key")) as server:
        status, _ = raw(server, "GET", "/v1/models", {"Host": "my-laptop.lan:8765", "Authorization": "Bearer s3cret-key"})
        assert status == 200
        assert raw(server, "GET", "/v1/models", {"Host": "my-laptop.lan:8765"})[0] == 401


def post_json(server: ServerController, content: bytes) -> httpx.Response:
    return httpx.post(server.api_base_url + "/chat/completions", content=content,
                      headers={"content-type": "application/json"}, timeout=30)  # fmt: skip


def test_a_hundred_thousand_messages_are_refused_at_once(server: ServerController, model: KeyedScriptedFakeModel) -> None:
    messages = [{"role": "user", "content": "a"}] * 100_000  # about 3.2 MB: under the 4 MB body limit
    response = post_json(server, json.dumps({"messages": messages}).encode())
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_messages"
    assert f"{SERVER_MAX_MESSAGES:,}" in response.json()["error"]["message"]
    assert model.started_prompts == []


def test_deep_nesting_and_huge_numbers_are_400_not_500(server: ServerController) -> None:
    nested = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = post_json(server, nested)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    huge = b"1" + b"0" * 400  # 1e400 written as an integer: float() of it overflows
    for name in ("temperature", "top_p", "presence_penalty", "repetition_penalty", "max_tokens", "top_k", "seed"):
        body = json.dumps(CHAT)[:-1].encode() + b', "' + name.encode() + b'": ' + huge + b"}"
        response = post_json(server, body)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"]["param"] == name
        assert len(response.json()["error"]["message"]) < 300  # the 401 digits are not echoed back
