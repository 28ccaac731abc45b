"""Queueing, cancellation and mix-ups through the real HTTP server, with a scripted fake model (orchestration only;
the real embedded model goes through the same server in test_real_model.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from src.errors import ContextOverflowError, ProviderError
from tests.server.conftest import FAKE_MODEL, fake_app
from tests.server.fakes import KeyedScriptedFakeModel


def _client(base_url: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30, **kwargs)


def _wait_until(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_eight_concurrent_streams_each_get_their_own_full_reply(serve) -> None:  # type: ignore[no-untyped-def]
    replies = {f"question {i}": " ".join(f"w{i}-{k}" for k in range(12)) for i in range(8)}
    model = KeyedScriptedFakeModel(replies, delay_s=0.003)
    server = serve(fake_app(model))
    client = _client(server.api_base_url)

    def ask(prompt: str) -> tuple[str, str | None, list[str]]:
        roles, text, finish = [], [], None
        stream = client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": prompt}], stream=True
        )
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-")
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            text.append(delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish, roles

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(replies, pool.map(ask, replies)))
    for prompt, (text, finish, roles) in results.items():
        assert text == replies[prompt]
        assert finish == "stop"
        assert roles == ["assistant"]
    assert model.max_running == 1  # the model generated one reply at a time
    assert sorted(model.started_prompts) == sorted(replies)


def test_requests_are_served_first_come_first_served(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel({"first": " ".join(["a"] * 50)}, delay_s=0.02, default_reply="a b c d e")
    server = serve(fake_app(model))
    queue = server.app.state.hearth.queue
    order = ["first", "second", "third", "fourth"]

    def ask(prompt: str) -> str:
        body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": prompt}]}
        return httpx.post(server.api_base_url + "/chat/completions", json=body, timeout=30).json()["choices"][0][
            "message"
        ]["content"]

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, order[0])]
        assert model.any_started.wait(5)
        for index, prompt in enumerate(order[1:], start=1):
            futures.append(pool.submit(ask, prompt))
            assert _wait_until(lambda index=index: queue.waiting == index)  # arrived, in this order
        assert [f.result() for f in futures][1:] == ["a b c d e"] * 3
    assert model.started_prompts == order


def test_full_queue_answers_429(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel({"hi": " ".join(["word"] * 400)}, delay_s=0.05, default_reply="short")
    server = serve(fake_app(model, max_queue=1))
    queue = server.app.state.hearth.queue
    url = server.api_base_url + "/chat/completions"
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(timeout=30) as running, httpx.Client(timeout=30) as waiting:
        with running.stream("POST", url, json=body) as first:
            assert first.status_code == 200
            waiting_body = {"messages": [{"role": "user", "content": "waiting"}]}
            waiter = threading.Thread(target=lambda: waiting.post(url, json=waiting_body))
            waiter.start()
            assert _wait_until(lambda: queue.waiting == 1)
            refused = httpx.post(url, json=body, timeout=10)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "queue_full"
            assert refused.headers["retry-after"] == "1"
            with pytest.raises(openai.RateLimitError):
                _client(server.api_base_url).chat.completions.create(
                    model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}]
                )
            metrics = httpx.get(server.url + "/metrics").text
            assert "hearth_server_queue_length 1" in metrics
            assert "hearth_server_active_generations 1" in metrics
        # Leaving the first stream cancels it; the waiting request then runs.
        waiter.join(10)
    assert not waiter.is_alive()


def test_client_disconnect_mid_stream_cancels_the_generation_and_frees_the_model(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(
        {"long": " ".join(["word"] * 1000), "next": "served right after"}, delay_s=0.02
    )
    server = serve(fake_app(model))
    url = server.api_base_url + "/chat/completions"
    with httpx.stream(
        "POST", url, json={"messages": [{"role": "user", "content": "long"}], "stream": True}, timeout=30
    ) as response:
        contents = 0
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                contents += 1
            if contents == 3:
                break
    disconnected_at = time.monotonic()
    long_stream = model.streams[0]
    assert long_stream.cancelled.wait(2), "the generation was not cancelled when the client left"
    assert _wait_until(lambda: long_stream.result is not None, 2)
    assert long_stream.result.finish_reason == "cancelled"
    assert len(long_stream.result.text.split()) < 100
    reply = _client(server.api_base_url).chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "next"}]
    )
    assert reply.choices[0].message.content == "served right after"
    assert time.monotonic() - disconnected_at < 3
    assert "hearth_server_cancelled_total 1" in httpx.get(server.url + "/metrics").text


def test_a_queued_request_whose_client_left_is_dropped(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel({"long": " ".join(["word"] * 1000)}, delay_s=0.02)
    server = serve(fake_app(model))
    queue = server.app.state.hearth.queue
    url = server.api_base_url + "/chat/completions"
    with httpx.stream(
        "POST", url, json={"messages": [{"role": "user", "content": "long"}], "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        body = json.dumps({"messages": [{"role": "user", "content": "abandoned"}]}).encode()
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
                + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert _wait_until(lambda: queue.waiting == 1)
        raw.close()
        assert _wait_until(lambda: queue.waiting == 0), "the abandoned request stayed in the queue"
    assert _wait_until(lambda: queue.active == 0)
    assert "abandoned" not in model.started_prompts
    assert 'status="499"' in httpx.get(server.url + "/metrics").text


def test_error_in_the_middle_of_a_stream_is_an_openai_error_event(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(default_reply="one two three", fail_with=ProviderError("the fake broke"))
    server = serve(fake_app(model))
    stream = _client(server.api_base_url).chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="the fake broke"):
        for _ in stream:
            pass
    # The server is still fine afterwards.
    model.fail_with = None
    assert _client(server.api_base_url).chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}]
    ).choices[0].message.content == "one two three"


def test_an_unexpected_exception_is_a_clean_500_without_traceback(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(fail_on_stream=RuntimeError("internal detail xyz"))
    server = serve(fake_app(model))
    response = httpx.post(
        server.api_base_url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "xyz" not in response.text and "Traceback" not in response.text
    assert "internal detail xyz" in caplog.text  # logged on the server side
    assert server.app.state.hearth.queue.active == 0 or _wait_until(lambda: server.app.state.hearth.queue.active == 0)


def test_model_errors_raised_by_stream_keep_their_status(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(fail_on_stream=ContextOverflowError(needed=9000, limit=8192))
    server = serve(fake_app(model))
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server.api_base_url).chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert caught.value.code == "context_length_exceeded"


def test_openai_parameters_reach_the_model(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(default_reply="x y z")
    server = serve(fake_app(model))
    client = _client(server.api_base_url)
    client.chat.completions.create(
        model=FAKE_MODEL,
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.3, top_p=0.5, max_tokens=7, stop=["END", "###"], seed=42,
        presence_penalty=0.5, frequency_penalty=-0.5, n=1, user="someone",
    )  # fmt: skip
    client.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3, stop="STOP"
    )
    client.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], top_p=0, extra_body={"top_k": 5, "repetition_penalty": 1.3}
    )
    first, second, third = model.params
    assert (first.temperature, first.top_p, first.max_new_tokens, first.stop, first.seed) == (
        0.3, 0.5, 7, ("END", "###"), 42,
    )  # fmt: skip
    assert (second.max_new_tokens, second.stop) == (3, ("STOP",))
    assert (third.temperature, third.top_k, third.repetition_penalty) == (0.0, 5, 1.3)


def test_finish_reason_length_when_max_tokens_cut_the_reply(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel(default_reply="one two three four five")
    server = serve(fake_app(model))
    reply = _client(server.api_base_url).chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content == "one two"
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 2, 5)


def test_stopping_the_server_cancels_open_streams_promptly(serve) -> None:  # type: ignore[no-untyped-def]
    model = KeyedScriptedFakeModel({"long": " ".join(["word"] * 1000)}, delay_s=0.02)
    server = serve(fake_app(model))
    received: list[str] = []

    def read() -> None:
        body = {"messages": [{"role": "user", "content": "long"}], "stream": True}
        try:
            with httpx.stream("POST", server.api_base_url + "/chat/completions", json=body, timeout=30) as response:
                received.extend(response.iter_lines())
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    assert model.any_started.wait(5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert not server.is_running
    assert model.streams[0].cancelled.is_set()
    reader.join(5)
    assert not reader.is_alive()
    assert any("server_shutting_down" in line for line in received)  # the stream ended with an error event
