"""OpenAI-style errors (400, 401, 404, 413), auth, CORS and the bind rules, through the real HTTP server."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest

from src.errors import InsecureServerBindError, ServerStartError, UnknownModelError
from src.server import ServerController, check_bind_security, is_loopback_host
from src.server.cli import add_serve_parser, run_serve
from src.settings import ENV_SERVER_API_KEY, reload_settings
from tests.server.conftest import FAKE_MODEL, fake_app
from tests.server.fakes import KeyedScriptedFakeModel

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake_server(serve):  # type: ignore[no-untyped-def]
    return serve(fake_app(KeyedScriptedFakeModel(default_reply="fine"), max_body_bytes=64 * 1024, max_tokens_limit=100))


JSON = {"content-type": "application/json"}


def _post(server: ServerController, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(server.api_base_url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def _client(server: ServerController, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base_url, api_key=key, max_retries=0, timeout=10)


def _error(response: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


# --- 400 ---------------------------------------------------------------------------------------------------------


def test_malformed_json_is_400(fake_server) -> None:  # type: ignore[no-untyped-def]
    error = _error(_post(fake_server, "/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    _error(_post(fake_server, "/chat/completions", content=b"\xff\xfe", headers=JSON), 400)
    _error(_post(fake_server, "/chat/completions", content=b"", headers=JSON), 400)
    _error(_post(fake_server, "/chat/completions", json=["not", "an", "object"]), 400)
    _error(_post(fake_server, "/completions", content=b"{nope", headers=JSON), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
        ({"messages": USER, "temperature": 2.5}, "temperature"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": 101}, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": USER, "presence_penalty": 3}, "presence_penalty"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": USER, "stop": 7}, "stop"),
        ({"messages": USER, "seed": "x"}, "seed"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": USER, "logprobs": True}, "logprobs"),
        ({"messages": USER, "model": ""}, "model"),
    ],
)
def test_bad_chat_requests_are_400_with_the_parameter_named(fake_server, body, param) -> None:  # type: ignore[no-untyped-def]
    error = _error(_post(fake_server, "/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_bad_legacy_completion_requests_are_400(fake_server) -> None:  # type: ignore[no-untyped-def]
    assert _error(_post(fake_server, "/completions", json={}), 400)["param"] == "prompt"
    assert _error(_post(fake_server, "/completions", json={"prompt": ["a", "b"]}), 400)["param"] == "prompt"
    assert _error(_post(fake_server, "/completions", json={"prompt": "a", "suffix": "b"}), 400)["param"] == "suffix"
    assert _error(_post(fake_server, "/completions", json={"prompt": "a", "best_of": 3}), 400)["param"] == "best_of"


def test_the_openai_client_sees_bad_requests_as_bad_request_errors(fake_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(fake_server)
    cases = [
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": USER, "temperature": 9},
        {"messages": USER, "n": 2},
        {"messages": USER, "response_format": {"type": "json_object"}},
    ]
    for kwargs in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=FAKE_MODEL, **kwargs)  # type: ignore[call-overload]
        assert caught.value.status_code == 400
        assert caught.value.type == "invalid_request_error"


# --- 404 / 405 -------------------------------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(fake_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as caught:
        _client(fake_server).chat.completions.create(model="gpt-17", messages=USER)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    assert "gpt-17" in str(caught.value) and FAKE_MODEL in str(caught.value)
    _error(_post(fake_server, "/completions", json={"model": "../../etc/passwd", "prompt": "x"}), 404)
    error = _error(httpx.get(fake_server.api_base_url + "/models/nope"), 404)
    assert error["code"] == "model_not_found"
    assert httpx.get(fake_server.api_base_url + f"/models/{FAKE_MODEL}").json()["id"] == FAKE_MODEL


def test_unknown_urls_and_methods_are_json_errors(fake_server) -> None:  # type: ignore[no-untyped-def]
    assert _error(httpx.get(fake_server.url + "/v1/nothing"), 404)["code"] == "unknown_url"
    _error(httpx.get(fake_server.api_base_url + "/chat/completions"), 405)


# --- 413 ---------------------------------------------------------------------------------------------------------


def test_too_large_bodies_are_413(fake_server) -> None:  # type: ignore[no-untyped-def]
    big = {"messages": [{"role": "user", "content": "x" * (100 * 1024)}]}
    error = _error(_post(fake_server, "/chat/completions", json=big), 413)
    assert "65,536" in error["message"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * (16 * 1024)

    _error(_post(fake_server, "/chat/completions", content=chunked(), headers=JSON), 413)
    with pytest.raises(openai.APIStatusError) as caught:
        _client(fake_server).chat.completions.create(model=FAKE_MODEL, messages=big["messages"])  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    # The server keeps working.
    assert _post(fake_server, "/chat/completions", json={"messages": USER}).status_code == 200


# --- auth ----------------------------------------------------------------------------------------------------------


def test_api_key_is_required_when_configured(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(fake_app(KeyedScriptedFakeModel(default_reply="fine"), api_key="sk-right"))
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(server, "sk-wrong").chat.completions.create(model=FAKE_MODEL, messages=USER)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(server, "sk-wrong").models.list()
    assert _error(httpx.get(server.api_base_url + "/models"), 401)["code"] == "invalid_api_key"
    assert httpx.get(server.api_base_url + "/models", headers={"Authorization": "Basic sk-right"}).status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # health is public and says nothing more
    reply = _client(server, "sk-right").chat.completions.create(model=FAKE_MODEL, messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "fine"
    assert "sk-right" not in httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer sk-right"}).text


# --- CORS ----------------------------------------------------------------------------------------------------------


def test_cors_is_off_by_default_and_configurable(serve) -> None:  # type: ignore[no-untyped-def]
    plain = serve(fake_app(KeyedScriptedFakeModel()))
    response = httpx.get(plain.api_base_url + "/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    open_to_one = serve(fake_app(KeyedScriptedFakeModel(), cors_origins=["http://localhost:3000"], api_key="k"))
    preflight = httpx.options(
        open_to_one.api_base_url + "/chat/completions",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = httpx.options(
        open_to_one.api_base_url + "/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.headers.get("access-control-allow-origin") != "http://evil.example"


# --- binding -------------------------------------------------------------------------------------------------------


def test_a_non_loopback_host_needs_an_api_key() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost") and is_loopback_host("::1")
    assert is_loopback_host("127.0.0.2") and not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.5")
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(InsecureServerBindError, match="API key"):
            check_bind_security(host, None)
        with pytest.raises(InsecureServerBindError):
            ServerController(host, 0, app=object()).start()
    check_bind_security("0.0.0.0", "sk-key")  # allowed with a key
    check_bind_security("127.0.0.1", None)


def test_main_py_serve_refuses_a_lan_host_without_a_key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ENV_SERVER_API_KEY, raising=False)
    reload_settings()
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "0"])
    with pytest.raises(InsecureServerBindError):
        run_serve(args)
    # With the key in the environment it goes on to serving (stubbed here: no model load, no port).
    monkeypatch.setenv(ENV_SERVER_API_KEY, "sk-from-env")
    reload_settings()
    served: dict = {}  # type: ignore[type-arg]
    monkeypatch.setattr("src.server.cli._preload", lambda model: None)
    monkeypatch.setattr(
        "src.server.controller.serve_forever",
        lambda host, port, app, *, api_key, on_started: served.update(host=host, api_key=api_key, app=app),
    )
    assert run_serve(args) == 0
    assert served["host"] == "0.0.0.0" and served["api_key"] == "sk-from-env"
    assert served["app"].state.hearth.api_key == "sk-from-env"
    bad_model = parser.parse_args(["serve", "--model", "no-such-model"])
    with pytest.raises(UnknownModelError):
        run_serve(bad_model)
    options = parser.parse_args(
        ["serve", "--port", "9999", "--api-key", "k", "--model", "smollm2-135m", "--cors-origin", "http://a", "--cors-origin", "http://b"]
    )
    assert (options.port, options.api_key, options.model, options.cors_origins) == (9999, "k", "smollm2-135m", ["http://a", "http://b"])


def test_a_port_in_use_is_a_clear_error(serve) -> None:  # type: ignore[no-untyped-def]
    first = serve(fake_app(KeyedScriptedFakeModel()))
    with pytest.raises(ServerStartError, match="port"):
        ServerController("127.0.0.1", first.port, app=fake_app(KeyedScriptedFakeModel())).start()
    assert first.is_running and first.url == f"http://127.0.0.1:{first.port}"
    first.stop()
    assert not first.is_running and first.url is None
