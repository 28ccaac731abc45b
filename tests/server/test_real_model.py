"""The official ``openai`` client and Hearth's own provider against the server, on the REAL embedded model
(few tokens each). The server runs with uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from src.server import create_app, local_model_factory
from src.utils.generation import FINISH_CANCELLED, ChatMessage, GenerationParams, TextStream
from src.utils.openai_compatible import OpenAICompatibleProvider
from tests.server.conftest import REAL_MODEL

HELLO = [{"role": "user", "content": "Say hello."}]


class RecordingLocalModel:
    """The real local model, keeping every TextStream it hands out (to see that a disconnect cancelled it)."""

    def __init__(self) -> None:
        self.inner = local_model_factory(REAL_MODEL)
        self.streams: list[TextStream] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def stream(self, messages: list[ChatMessage], params: GenerationParams) -> TextStream:
        stream = self.inner.stream(messages, params)
        self.streams.append(stream)
        return stream


@pytest.fixture
def real_server(serve):  # type: ignore[no-untyped-def]
    return serve(create_app())


def _client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.api_base_url, api_key="not-needed", max_retries=0, timeout=120)


def test_models_lists_the_embedded_model(real_server) -> None:  # type: ignore[no-untyped-def]
    ids = [model.id for model in _client(real_server).models.list()]
    assert REAL_MODEL in ids
    assert _client(real_server).models.retrieve(REAL_MODEL).id == REAL_MODEL


def test_chat_completion_non_streaming(real_server) -> None:  # type: ignore[no-untyped-def]
    reply = _client(real_server).chat.completions.create(model=REAL_MODEL, messages=HELLO, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == REAL_MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_streaming_with_usage_in_the_final_chunk(real_server) -> None:  # type: ignore[no-untyped-def]
    chunks = list(
        _client(real_server).chat.completions.create(
            model=REAL_MODEL, messages=HELLO, max_tokens=8, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])
    # Same prompt, greedy, non-streamed: the same text.
    again = _client(real_server).chat.completions.create(model=REAL_MODEL, messages=HELLO, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert again.choices[0].message.content == text


def test_the_raw_event_stream_is_in_openai_format(real_server) -> None:  # type: ignore[no-untyped-def]
    body = {"model": REAL_MODEL, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", real_server.api_base_url + "/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert events[0].startswith('data: {"id":"chatcmpl-')  # compact JSON, id first, as OpenAI sends it
    assert first["object"] == "chat.completion.chunk" and isinstance(first["created"], int)
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in last  # not asked for


def test_legacy_completions_stream_and_non_stream(real_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(real_server)
    reply = client.completions.create(model=REAL_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text.strip()
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    chunks = list(
        client.completions.create(
            model=REAL_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    echoed = client.completions.create(model=REAL_MODEL, prompt="Hi", max_tokens=2, echo=True)
    assert echoed.choices[0].text.startswith("Hi")


def test_hearths_own_openai_compatible_provider_works_against_it(real_server) -> None:  # type: ignore[no-untyped-def]
    provider = OpenAICompatibleProvider(real_server.url, REAL_MODEL)  # no /v1: normalised like any server
    try:
        assert REAL_MODEL in provider.list_models()
        result = provider.stream([ChatMessage("user", "Say hello.")], GenerationParams(max_new_tokens=8, temperature=0)).collect()
        assert result.text.strip() and result.finish_reason in ("stop", "length")
        assert 0 < result.stats.completion_tokens <= 8 and result.stats.prompt_tokens > 0
        direct = local_model_factory(REAL_MODEL).stream(
            [ChatMessage("user", "Say hello.")], GenerationParams(max_new_tokens=8, temperature=0)
        ).collect()
        assert result.text == direct.text  # one Hearth serving another changes nothing
    finally:
        provider.close()


def test_a_disconnect_stops_the_real_model_and_the_next_request_is_served(serve) -> None:  # type: ignore[no-untyped-def]
    model = RecordingLocalModel()
    server = serve(create_app(model_factory=lambda model_id: model, model_ids=lambda: [REAL_MODEL]))
    body = {"model": REAL_MODEL, "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 2000, "stream": True, "temperature": 0.8}  # fmt: skip
    with httpx.stream("POST", server.api_base_url + "/chat/completions", json=body, timeout=120) as response:
        contents = 0
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                contents += 1
            if contents == 3:
                break
    left_at = time.monotonic()
    stream = model.streams[0]
    assert stream.cancelled.wait(2)
    deadline = time.monotonic() + 5
    while stream.result is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.result is not None and stream.result.finish_reason == FINISH_CANCELLED
    assert stream.result.stats.completion_tokens < 200
    reply = _client(server).chat.completions.create(model=REAL_MODEL, messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert time.monotonic() - left_at < 30


def test_concurrent_real_streams_each_get_their_own_reply(real_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(real_server)
    prompts = ["Name a fruit.", "Name a color.", "Name an animal."]
    expected = {
        p: client.chat.completions.create(
            model=REAL_MODEL, messages=[{"role": "user", "content": p}], max_tokens=6, temperature=0
        ).choices[0].message.content
        for p in prompts
    }

    def ask(prompt: str) -> str:
        stream = client.chat.completions.create(
            model=REAL_MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=6, temperature=0, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(len(prompts)) as pool:
        got = dict(zip(prompts, pool.map(ask, prompts)))
    assert got == expected
    assert len(set(expected.values())) > 1  # distinct replies, so a mix-up would show


def test_metrics_count_requests_tokens_and_timings(real_server) -> None:  # type: ignore[no-untyped-def]
    client = _client(real_server)
    reply = client.chat.completions.create(model=REAL_MODEL, messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    httpx.post(real_server.api_base_url + "/chat/completions", json={"messages": [{"role": "x", "content": ""}]})
    text = httpx.get(real_server.url + "/metrics").text
    assert httpx.get(real_server.url + "/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['hearth_server_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 1
    assert samples['hearth_server_requests_total{endpoint="/v1/chat/completions",status="400"}'] == 1
    assert samples['hearth_server_errors_total{endpoint="/v1/chat/completions",code="400"}'] == 1
    assert samples[f'hearth_server_completion_tokens_total{{model="{REAL_MODEL}"}}'] == reply.usage.completion_tokens
    assert samples[f'hearth_server_prompt_tokens_total{{model="{REAL_MODEL}"}}'] == reply.usage.prompt_tokens
    assert samples["hearth_server_time_to_first_token_seconds_count"] == 1
    assert samples['hearth_server_time_to_first_token_seconds_bucket{le="+Inf"}'] == 1
    assert samples["hearth_server_tokens_per_second_count"] == 1
    assert samples[f'hearth_server_model_info{{model="{REAL_MODEL}"}}'] == 1
    assert samples["hearth_server_queue_length"] == 0
    assert "# TYPE hearth_server_time_to_first_token_seconds histogram" in text
