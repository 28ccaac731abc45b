"""LocalLLMEngine on the real embedded model (SmolLM2-135M), generating a few tokens per test.

Every test runs against both backends: llama.cpp (the GGUF file as shipped) and transformers (its converted copy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from src.errors import ContextOverflowError, InvalidParameterError, ModelNotDownloadedError, UnknownModelError
from src.settings import BACKEND_LLAMACPP, BACKEND_TRANSFORMERS
from src.utils.generation import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, ChatMessage
from src.utils.llamacpp_backend import llamacpp_available
from src.utils.LocalLLMEngine import LocalLLMEngine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]

BACKENDS = [
    pytest.param(
        BACKEND_LLAMACPP,
        marks=pytest.mark.skipif(not llamacpp_available(), reason="xllamacpp is not installed"),
        id="llama.cpp",
    ),
    pytest.param(BACKEND_TRANSFORMERS, id="transformers"),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(backend: str) -> Iterator[LocalLLMEngine]:
    engine = LocalLLMEngine(backend=backend)
    engine.load_model("smollm2-135m")
    yield engine
    engine.unload_model()


def test_the_engine_runs_on_the_backend_asked_for(engine: LocalLLMEngine, backend: str) -> None:
    assert engine.loaded is not None and engine.loaded.backend == backend
    assert engine.loaded.context_window == 8192


def test_streams_a_real_reply_with_stats(engine: LocalLLMEngine) -> None:
    stream = engine.stream(QUESTION, temperature=0, max_new_tokens=12)
    pieces = list(stream)
    result = stream.result
    assert result is not None
    assert len(pieces) >= 2, "the reply should arrive in several pieces"
    assert "".join(pieces) == result.text
    assert "Paris" in result.text
    assert result.model == "smollm2-135m"
    assert result.finish_reason in (FINISH_STOP, FINISH_LENGTH)
    assert result.stats.prompt_tokens > 5
    assert 1 <= result.stats.completion_tokens <= 12
    assert result.stats.time_to_first_token_s is not None and result.stats.time_to_first_token_s > 0
    assert result.stats.tokens_per_s is not None and result.stats.tokens_per_s > 0
    assert "<|im_end|>" not in result.text


def test_generate_is_deterministic_when_greedy_and_with_a_seed(engine: LocalLLMEngine) -> None:
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=8) == engine.generate(
        QUESTION, temperature=0, max_new_tokens=8
    )
    sampled = [engine.generate(STORY, temperature=1.0, max_new_tokens=8, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert engine.complete(QUESTION, temperature=0, max_new_tokens=8).text == engine.generate(
        QUESTION, temperature=0, max_new_tokens=8
    )


def test_max_new_tokens_limits_the_reply(engine: LocalLLMEngine) -> None:
    result = engine.complete(STORY, temperature=0, max_new_tokens=5)
    assert result.stats.completion_tokens == 5
    assert result.finish_reason == FINISH_LENGTH


def test_cancel_stops_the_generation_thread_within_one_token(engine: LocalLLMEngine, backend: str) -> None:
    counters = engine._backend.counters if backend == BACKEND_LLAMACPP else None
    before = counters() if counters else {}
    stream = engine.stream(STORY, temperature=0.7, seed=1, max_new_tokens=200)
    received = [next(stream)]
    stream.cancel()
    received += list(stream)
    result = stream.result
    assert result is not None and result.finish_reason == FINISH_CANCELLED
    # One piece was read when cancel() was called; the worker may finish the token it was computing, no more.
    assert result.stats.completion_tokens <= len(received) + 2
    assert result.stats.completion_tokens < 20
    assert not engine.is_generating
    assert result.text == "".join(received)
    if counters:
        # llama.cpp computes in its own threads: its own count of model evaluations proves it stopped too
        # (one for the prompt, one per token, at most one more in flight), even a moment later.
        time.sleep(0.3)
        decodes = counters()["n_decode_total"] - before["n_decode_total"]
        assert decodes <= result.stats.completion_tokens + 2


def test_cancel_from_another_thread_while_the_consumer_waits(engine: LocalLLMEngine) -> None:
    stream = engine.stream(STORY, temperature=0.7, seed=2, max_new_tokens=300)
    first = next(stream)
    timer = threading.Timer(0.3, stream.cancel)
    timer.start()
    started = time.monotonic()
    rest = list(stream)
    elapsed = time.monotonic() - started
    assert stream.result is not None and stream.result.finish_reason == FINISH_CANCELLED
    assert stream.result.stats.completion_tokens < 300
    assert elapsed < 10, "a cancelled stream must end promptly, not run to max_new_tokens"
    assert stream.result.text == first + "".join(rest)
    assert not engine.is_generating


def test_closing_an_abandoned_stream_stops_the_worker(engine: LocalLLMEngine) -> None:
    stream = engine.stream(STORY, temperature=0.7, seed=3, max_new_tokens=300)
    next(stream)
    stream.close()
    assert stream.result is not None and stream.result.finish_reason == FINISH_CANCELLED
    assert stream.result.stats.completion_tokens < 300
    assert not engine.is_generating


def test_stop_strings_cut_the_reply(engine: LocalLLMEngine) -> None:
    full = engine.generate(QUESTION, temperature=0, max_new_tokens=12)
    assert "Paris" in full
    cut = engine.complete(QUESTION, temperature=0, max_new_tokens=12, stop=["Paris"])
    assert cut.text == full[: full.index("Paris")]
    assert cut.finish_reason == FINISH_STOP


def test_chinese_prompt_never_yields_broken_characters(engine: LocalLLMEngine) -> None:
    result = engine.complete([{"role": "user", "content": "你好，请介绍一下自己"}], temperature=0, max_new_tokens=24)
    assert result.text
    assert "\ufffd" not in result.text


def test_bad_parameters_are_refused(engine: LocalLLMEngine) -> None:
    with pytest.raises(InvalidParameterError):
        engine.stream(QUESTION, temperature=-1)
    with pytest.raises(InvalidParameterError):
        engine.stream(QUESTION, max_new_tokens=0)
    with pytest.raises(InvalidParameterError, match="Unknown generation parameter"):
        engine.stream(QUESTION, max_tokenz=5)
    with pytest.raises(InvalidParameterError):
        engine.stream([{"role": "robot", "content": "hi"}])


def test_reloads_only_when_the_model_changes(engine: LocalLLMEngine) -> None:
    first = engine.load_model("smollm2-135m")
    assert engine.load_model("smollm2-135m") is first
    assert engine.load_model(str(first.folder)) is first  # the same folder by path is the same model
    with pytest.raises(ModelNotDownloadedError, match="python main.py models download qwen2.5-0.5b"):
        engine.load_model("qwen2.5-0.5b")
    with pytest.raises(UnknownModelError):
        engine.load_model("no-such-model")
    assert engine.loaded is first, "a failed load must not unload the working model"


# method="thread": a deadlock in native code holds the GIL, so only the watchdog thread's hard exit can end it.
@pytest.mark.timeout(240, method="thread")
def test_unload_frees_the_model_and_the_next_call_loads_it_again(backend: str) -> None:
    engine = LocalLLMEngine(backend=backend)
    engine.load_model()
    assert engine.loaded is not None
    engine.unload_model()
    assert engine.loaded is None
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=3)
    assert engine.loaded is not None
    engine.unload_model()


@pytest.mark.timeout(240, method="thread")
def test_a_model_unloaded_right_after_loading_frees_it_without_hanging(backend: str) -> None:
    # xllamacpp's server used to deadlock when destroyed before its task loop had started (see LlamaCppBackend):
    # without the fix, ten rounds here hung in most runs.
    engine = LocalLLMEngine(backend=backend)
    for _ in range(10):
        engine.load_model()
        engine.unload_model()
    assert engine.loaded is None
    assert engine.generate(QUESTION, temperature=0, max_new_tokens=2)
    engine.unload_model()


@pytest.fixture(scope="module")
def small(backend: str) -> Iterator[LocalLLMEngine]:
    """The embedded model with a 160-token window, so a short history overflows it."""
    engine = LocalLLMEngine(context_window=160, backend=backend)
    engine.load_model()
    yield engine
    engine.unload_model()


class TestContextWindow:
    def _history(self, turns: int) -> list[ChatMessage]:
        messages = [ChatMessage("system", "You are Hearth, a terse assistant. Remember: the code word is BLUE.")]
        for i in range(turns):
            messages.append(ChatMessage("user", f"Question number {i}: tell me a fact about the number {i}."))
            messages.append(ChatMessage("assistant", f"The number {i} is a whole number, fact {i}."))
        messages.append(ChatMessage("user", "What is the code word?"))
        return messages

    def test_oldest_turns_are_dropped_but_never_the_system_prompt(self, small: LocalLLMEngine) -> None:
        messages = self._history(turns=12)
        prompt = small.prepare_prompt(messages, max_new_tokens=16)
        assert prompt.dropped_messages > 0
        assert prompt.dropped_messages % 2 == 0, "a question and its answer go together"
        assert prompt.prompt_tokens + 16 <= 160
        text = small.decode(prompt.token_ids)
        assert "code word is BLUE" in text
        assert "What is the code word?" in text
        assert "Question number 0:" not in text
        assert "Question number 11:" in text, "the newest turns are kept"

        result = small.complete(messages, temperature=0, max_new_tokens=16)
        assert result.dropped_messages == prompt.dropped_messages
        assert result.stats.prompt_tokens + result.stats.completion_tokens <= 160

    def test_a_hundred_thousand_messages_are_trimmed_in_a_few_encodes(
        self, small: LocalLLMEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        messages = self._history(turns=50_000)  # 100,002 messages: what one 4 MB request could hold
        backend = small._loaded_backend()[1]
        encode = backend.encode_chat
        encoded: list[int] = []

        def counting(chat: Sequence[ChatMessage]) -> list[int]:
            encoded.append(len(chat))
            return encode(chat)

        monkeypatch.setattr(backend, "encode_chat", counting)
        prompt = small.prepare_prompt(messages, max_new_tokens=16)
        assert prompt.prompt_tokens + 16 <= 160 and prompt.dropped_messages % 2 == 0
        assert "code word is BLUE" in small.decode(prompt.token_ids)
        # Once per dropped message, each of the whole rest, was ~100,000 encodes of up to 100,000 messages.
        assert len(encoded) <= 40 and max(encoded) < 200, encoded

    def test_nothing_is_dropped_when_it_fits(self, small: LocalLLMEngine) -> None:
        assert small.prepare_prompt(self._history(turns=1), max_new_tokens=16).dropped_messages == 0

    def test_a_reply_that_would_overflow_is_shortened_and_says_so(self, small: LocalLLMEngine) -> None:
        messages = [ChatMessage("user", "word " * 100)]
        result = small.complete(messages, temperature=0, max_new_tokens=150)
        assert result.max_new_tokens_clamped_to is not None
        assert result.stats.prompt_tokens + result.stats.completion_tokens <= 160

    def test_a_single_message_longer_than_the_window_is_refused(self, small: LocalLLMEngine) -> None:
        with pytest.raises(ContextOverflowError, match="too long"):
            small.stream([ChatMessage("user", "word " * 400)], max_new_tokens=8)
