"""OpenAICompatibleProvider against a real HTTP server on 127.0.0.1 (tests/openai_test_server.py).

No fakes: every test speaks HTTP over a loopback socket to a scripted server that streams OpenAI's exact chunk
format, so parsing, timeouts, error mapping and cancellation are exercised the way they run in the app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from src.errors import (
    AuthenticationError,
    ConfigError,
    ProviderError,
    RemoteModelNotFoundError,
    ServerTimeoutError,
    ServerUnreachableError,
)
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatMessage,
    ChatModel,
    GenerationParams,
)
from src.utils.openai_compatible import OpenAICompatibleProvider, SSEEvent, iter_sse_events, normalise_base_url
from tests.openai_test_server import OpenAITestServer, count_tokens, split_words, unused_port

# A hang is a bug (a cancel that does not interrupt, a missing timeout): fail instead of blocking the suite.
pytestmark = pytest.mark.timeout(10)

MESSAGES = [
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "Say hello to the tests."),
]
LONG_REPLY = " ".join(f"word{i}" for i in range(40))

MakeProvider = Callable[..., OpenAICompatibleProvider]


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(chunk_delay_s=0.002) as srv:
        yield srv


@pytest.fixture
def make_provider(server: OpenAITestServer) -> Iterator[MakeProvider]:
    providers: list[OpenAICompatibleProvider] = []

    def make(
        base_url: str | None = None, model: str = "test-model", api_key: str | None = None, **kwargs: Any
    ) -> OpenAICompatibleProvider:
        # Explicit timeouts: the tests must not depend on HEARTH_REMOTE_READ_TIMEOUT in the environment.
        kwargs.setdefault("connect_timeout", 2.0)
        kwargs.setdefault("read_timeout", 5.0)
        provider = OpenAICompatibleProvider(base_url or server.base_url, model, api_key, **kwargs)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        provider.close()


# --- streaming ---------------------------------------------------------------------------------------------------


def test_streams_the_reply_in_several_pieces(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    provider: ChatModel = make_provider()
    stream = provider.stream(MESSAGES, GenerationParams())
    pieces = list(stream)

    assert "".join(pieces) == server.script.reply
    assert len(pieces) == len(split_words(server.script.reply)) > 1
    assert stream.result is not None
    assert stream.result.text == server.script.reply
    assert stream.result.finish_reason == FINISH_STOP
    assert stream.result.model == provider.model_name == "test-model"


def test_usage_and_timings_reach_the_stats(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.chunk_delay_s = 0.01
    result = make_provider().stream(MESSAGES, GenerationParams()).collect()

    stats = result.stats
    assert stats.prompt_tokens == sum(count_tokens(m.content) for m in MESSAGES)
    assert stats.completion_tokens == len(split_words(server.script.reply))
    assert stats.time_to_first_token_s is not None and 0 < stats.time_to_first_token_s < stats.total_s
    # Decode speed is measured after the first token: about one token per chunk delay here.
    assert stats.tokens_per_s is not None and 10 < stats.tokens_per_s < 150
    assert server.last_request().body["stream_options"] == {"include_usage": True}


def test_without_usage_chunks_are_counted_and_prompt_tokens_stay_zero(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    server.script.send_usage = False
    result = make_provider().stream(MESSAGES, GenerationParams()).collect()

    assert result.stats.prompt_tokens == 0
    assert result.stats.completion_tokens == len(split_words(server.script.reply))


def test_max_tokens_cut_reports_length(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    result = make_provider().stream(MESSAGES, GenerationParams(max_new_tokens=3)).collect()

    assert result.finish_reason == FINISH_LENGTH
    assert result.text == "".join(split_words(server.script.reply)[:3])
    assert result.stats.completion_tokens == 3


def test_request_body_has_messages_and_sampling_params_but_no_top_k(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    params = GenerationParams(
        max_new_tokens=77, temperature=0.3, top_p=0.8, top_k=20, repetition_penalty=1.3, seed=1234, stop=("###",)
    )
    make_provider().stream(MESSAGES, params).collect()

    request = server.last_request()
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == "test-model"
    assert body["messages"] == [m.as_dict() for m in MESSAGES]
    assert body["stream"] is True
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.8
    assert body["seed"] == 1234
    assert body["stop"] == ["###"]
    # OpenAI rejects fields it does not know.
    assert "top_k" not in body and "repetition_penalty" not in body


def test_seed_and_stop_are_omitted_when_unset(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    make_provider().stream(MESSAGES, GenerationParams()).collect()

    body = server.last_request().body
    assert "seed" not in body and "stop" not in body


def test_non_streaming_answer_is_accepted(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    # Some servers ignore "stream": true and answer with one chat.completion object.
    server.script.ignore_stream = True
    stream = make_provider().stream(MESSAGES, GenerationParams())
    pieces = list(stream)

    assert pieces == [server.script.reply]
    assert stream.result is not None and stream.result.finish_reason == FINISH_STOP
    assert stream.result.stats.prompt_tokens == sum(count_tokens(m.content) for m in MESSAGES)


# --- stop strings ------------------------------------------------------------------------------------------------


def test_stop_string_cuts_the_reply_even_if_the_server_ignores_stop(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    server.script.reply = "Alpha beta STOP gamma delta epsilon"
    server.script.honor_stop = False
    result = make_provider().stream(MESSAGES, GenerationParams(stop=("STOP",))).collect()

    assert result.text == "Alpha beta "
    assert result.finish_reason == FINISH_STOP
    assert server.last_request().body["stop"] == ["STOP"]


def test_stop_string_honoured_by_the_server(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.reply = "Alpha beta STOP gamma"
    result = make_provider().stream(MESSAGES, GenerationParams(stop=("STOP",))).collect()

    assert result.text == "Alpha beta "
    assert result.finish_reason == FINISH_STOP


# --- authentication ----------------------------------------------------------------------------------------------


def test_authorization_header_only_when_a_key_is_set(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    make_provider(api_key="sk-test-123").stream(MESSAGES, GenerationParams()).collect()
    assert server.last_request().header("Authorization") == "Bearer sk-test-123"

    make_provider().stream(MESSAGES, GenerationParams()).collect()
    assert server.last_request().header("Authorization") is None

    make_provider(api_key="").list_models()
    assert server.last_request().header("Authorization") is None


def test_wrong_key_raises_authentication_error_from_iteration(
    server: OpenAITestServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    server.script.api_key = "sk-right-key"
    caplog.set_level(logging.DEBUG)
    stream = make_provider(api_key="sk-wrong-key-999").stream(MESSAGES, GenerationParams())
    assert server.requests == []  # stream() itself sends nothing; errors come from the first next()

    with pytest.raises(AuthenticationError) as excinfo:
        next(stream)

    assert "Incorrect API key provided" in str(excinfo.value)  # the server's own message
    assert "\n" not in str(excinfo.value)
    assert stream.result is not None and stream.result.finish_reason == FINISH_ERROR
    assert "sk-wrong-key-999" not in caplog.text
    assert "sk-wrong-key-999" not in str(excinfo.value)


def test_missing_key_raises_authentication_error(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.api_key = "sk-right-key"
    with pytest.raises(AuthenticationError, match="didn't provide an API key"):
        make_provider().stream(MESSAGES, GenerationParams()).collect()
    with pytest.raises(AuthenticationError):
        make_provider().list_models()


def test_right_key_is_accepted_and_never_logged(
    server: OpenAITestServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    server.script.api_key = "sk-right-key-42"
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log at DEBUG too
    provider = make_provider(api_key="sk-right-key-42")

    assert provider.stream(MESSAGES, GenerationParams()).collect().text == server.script.reply
    provider.check_connection()
    assert "sk-right-key-42" not in caplog.text
    assert "sk-right-key-42" not in repr(provider)


# --- server errors -----------------------------------------------------------------------------------------------


def test_unknown_model_raises_remote_model_not_found(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    with pytest.raises(RemoteModelNotFoundError) as excinfo:
        make_provider(model="no-such-model").stream(MESSAGES, GenerationParams()).collect()
    assert "no-such-model" in str(excinfo.value)


def test_server_error_500_shows_the_server_message(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.error_status = 500
    server.script.error_body = {"error": {"message": "CUDA out of memory while loading the model", "type": "server"}}
    with pytest.raises(ProviderError) as excinfo:
        make_provider().stream(MESSAGES, GenerationParams()).collect()

    message = str(excinfo.value)
    assert type(excinfo.value) is ProviderError  # a 500 mentioning "model" is not a missing model
    assert "500" in message and "CUDA out of memory while loading the model" in message
    assert "Traceback" not in message and "\n" not in message


def test_long_plain_text_error_is_truncated(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.error_status = 502
    server.script.error_body = "upstream exploded " * 200
    with pytest.raises(ProviderError) as excinfo:
        make_provider().list_models()

    message = str(excinfo.value)
    assert "502" in message and "upstream exploded" in message
    assert len(message) < 500


def test_wrong_path_is_a_provider_error_with_a_hint(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    with pytest.raises(ProviderError) as excinfo:
        make_provider(base_url=server.root_url + "/api").stream(MESSAGES, GenerationParams()).collect()

    assert not isinstance(excinfo.value, RemoteModelNotFoundError)
    assert "404" in str(excinfo.value) and "Invalid URL" in str(excinfo.value) and "/v1" in str(excinfo.value)


def test_malformed_event_raises_provider_error_and_keeps_partial_text(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    server.script.raw_stream = [
        'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}\n\n',
        "data: {this is not json\n\n",
    ]
    stream = make_provider().stream(MESSAGES, GenerationParams())
    with pytest.raises(ProviderError, match="malformed event"):
        list(stream)
    assert stream.result is not None
    assert stream.result.finish_reason == FINISH_ERROR and stream.result.text == "Hi"


def test_error_event_in_the_stream_raises_provider_error(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    server.script.raw_stream = [
        'data: {"choices": [{"index": 0, "delta": {"content": "Partial"}, "finish_reason": null}]}\n\n',
        'data: {"error": {"message": "the model runner crashed", "type": "server_error"}}\n\n',
    ]
    with pytest.raises(ProviderError, match="the model runner crashed"):
        make_provider().stream(MESSAGES, GenerationParams()).collect()


def test_sse_framing_comments_multiline_data_and_crlf(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.raw_stream = [
        ": keep-alive comment\r\n\r\n",
        'data: {"choices": [{"index": 0, "delta":\r\ndata: {"content": "Hel"}, "finish_reason": null}]}\r\n\r\n',
        'id: 7\nevent: message\ndata:{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}\n\n',
        "data: [DONE]\n\n",
        'data: {"choices": [{"index": 0, "delta": {"content": "after DONE"}}]}\n\n',
    ]
    result = make_provider().stream(MESSAGES, GenerationParams()).collect()

    assert result.text == "Hello"
    assert result.finish_reason == FINISH_LENGTH
    assert result.stats.completion_tokens == 2 and result.stats.prompt_tokens == 0


def test_iter_sse_events_edge_cases() -> None:
    lines = ["\ufeffdata: a", "data:b", "data", "", ":comment", "event: error", "data: {}", "", "retry: 5", ""]
    lines.append("data: tail")
    assert list(iter_sse_events(lines)) == [
        SSEEvent("message", "a\nb\n"),
        SSEEvent("error", "{}"),
        SSEEvent("message", "tail"),  # pending at the end of the stream: dispatched anyway
    ]


# --- connection failures -----------------------------------------------------------------------------------------


def test_connection_refused_is_server_unreachable_quickly(make_provider: MakeProvider) -> None:
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    provider = make_provider(base_url=base_url)
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError) as excinfo:
        next(provider.stream(MESSAGES, GenerationParams()))
    assert time.monotonic() - started < 1.0
    assert base_url in str(excinfo.value)
    with pytest.raises(ServerUnreachableError):
        provider.check_connection()


def test_slow_headers_raise_server_timeout(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.header_delay_s = 3.0
    stream = make_provider(read_timeout=0.2).stream(MESSAGES, GenerationParams())
    started = time.monotonic()
    with pytest.raises(ServerTimeoutError, match="0.2 s"):
        list(stream)
    assert time.monotonic() - started < 1.5
    assert stream.result is not None and stream.result.finish_reason == FINISH_ERROR


def test_environment_proxy_never_intercepts_loopback(
    server: OpenAITestServer, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{unused_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # The proxy is live for httpx: a plain client goes through it and fails...
    with httpx.Client(trust_env=True, timeout=2.0) as plain, pytest.raises(httpx.TransportError):
        plain.get(server.base_url + "/models")
    # ...while the provider reaches the loopback server directly.
    assert make_provider().stream(MESSAGES, GenerationParams()).collect().text == server.script.reply


# --- cancel ------------------------------------------------------------------------------------------------------


def test_cancel_from_another_thread_interrupts_a_blocked_read(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    server.script.reply = LONG_REPLY
    server.script.chunk_delay_s = 0.6  # the next piece is far away: only an interrupted read ends sooner
    stream = make_provider().stream(MESSAGES, GenerationParams())
    first = next(stream)
    canceller = threading.Timer(0.1, stream.cancel)
    started = time.monotonic()
    canceller.start()
    rest = list(stream)
    elapsed = time.monotonic() - started
    canceller.join()

    assert rest == []
    assert elapsed < 0.45
    assert stream.result is not None
    assert stream.result.finish_reason == FINISH_CANCELLED
    assert stream.result.text == first == "word0"
    assert server.wait_for_disconnect(2.0)


def test_cancel_while_waiting_for_headers(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    # A local server may think for a long time before the first byte; cancel must not wait for it.
    server.script.header_delay_s = 5.0
    stream = make_provider().stream(MESSAGES, GenerationParams())
    canceller = threading.Timer(0.2, stream.cancel)
    started = time.monotonic()
    canceller.start()
    pieces = list(stream)
    canceller.join()

    assert pieces == []
    assert time.monotonic() - started < 1.0
    assert stream.result is not None and stream.result.finish_reason == FINISH_CANCELLED
    assert server.wait_for_disconnect(2.0)


def test_close_mid_stream_cancels_and_disconnects(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.reply = LONG_REPLY
    server.script.chunk_delay_s = 0.05
    with make_provider().stream(MESSAGES, GenerationParams()) as stream:
        first, second = next(stream), next(stream)

    assert stream.result is not None
    assert stream.result.finish_reason == FINISH_CANCELLED
    assert stream.result.text == first + second == "word0 word1"
    assert server.wait_for_disconnect(2.0)


def test_close_before_iterating_sets_a_cancelled_result(
    server: OpenAITestServer, make_provider: MakeProvider
) -> None:
    stream = make_provider().stream(MESSAGES, GenerationParams())
    stream.close()

    assert stream.result is not None and stream.result.finish_reason == FINISH_CANCELLED
    assert list(stream) == []
    assert server.requests == []


# --- base URL, models, connection check --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:11434", "http://localhost:11434/v1"),
        ("http://localhost:11434/", "http://localhost:11434/v1"),
        ("  http://localhost:1234/v1/  ", "http://localhost:1234/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://gpu-box:8000/custom/path//", "http://gpu-box:8000/custom/path"),
        ("http://[::1]:8080", "http://[::1]:8080/v1"),
    ],
)
def test_base_url_normalisation(given: str, expected: str) -> None:
    assert normalise_base_url(given) == expected
    with OpenAICompatibleProvider(given, "m") as provider:
        assert provider.base_url == expected


@pytest.mark.parametrize("bad", ["localhost:11434", "ftp://host/v1", "", "http://"])
def test_invalid_base_url_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        OpenAICompatibleProvider(bad, "m")


def test_root_url_reaches_the_v1_endpoints(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    provider = make_provider(base_url=server.root_url + "/")
    assert provider.stream(MESSAGES, GenerationParams()).collect().text == server.script.reply
    assert server.last_request().path == "/v1/chat/completions"


def test_list_models(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    server.script.models = ("test-model", "b-model", "A-model")
    assert make_provider().list_models() == ["A-model", "b-model", "test-model"]
    assert server.last_request().method == "GET" and server.last_request().path == "/v1/models"


def test_check_connection(server: OpenAITestServer, make_provider: MakeProvider) -> None:
    summary = make_provider().check_connection()
    assert "\n" not in summary
    assert server.base_url in summary and "'test-model' is available" in summary

    with pytest.raises(RemoteModelNotFoundError, match="available: test-model"):
        make_provider(model="missing").check_connection()

    # Ollama lists "llama3:latest" but serves it as "llama3" too.
    server.script.models = ("llama3:latest",)
    assert "'llama3' is available" in make_provider(model="llama3").check_connection()

    # No model chosen yet (a settings form filling its model picker): just a count.
    assert "1 model(s) available" in make_provider(model="").check_connection()


def test_empty_model_name_is_a_config_error_on_iteration(make_provider: MakeProvider) -> None:
    stream = make_provider(model="  ").stream(MESSAGES, GenerationParams())
    with pytest.raises(ConfigError, match="No model name"):
        next(stream)
