"""``TextStream`` owns its text: producers report how a reply ended, never the text again (the real engine and the
OpenAI-compatible provider do this in tests/test_engine.py and tests/test_openai_compatible.py)."""

from __future__ import annotations

from collections.abc import Iterator

from src.utils.generation import FINISH_CANCELLED, FINISH_STOP, GenerationResult, GenerationStats, TextStream


def producing(stream: TextStream, pieces: list[str]) -> Iterator[str]:
    finish = FINISH_CANCELLED
    try:
        yield from pieces
        finish = FINISH_STOP
    finally:
        stream.finish("scripted-fake", finish, GenerationStats(completion_tokens=len(pieces)))


def test_the_result_holds_what_the_stream_delivered() -> None:
    stream = TextStream()
    stream.start(producing(stream, ["Hel", "lo", " there"]))
    assert next(stream) == "Hel" and stream.text == "Hel"
    result = stream.collect()
    assert (result.text, result.finish_reason, result.stats.completion_tokens) == ("Hello there", FINISH_STOP, 3)
    assert stream.text == "Hello there"


def test_on_done_is_called_once_with_the_result_even_when_registered_late() -> None:
    stream = TextStream()
    stream.start(producing(stream, ["a", "b"]))
    seen: list[GenerationResult] = []
    stream.on_done(seen.append)
    assert seen == []  # not before the end
    stream.collect()
    stream.on_done(seen.append)  # after the end: at once
    assert [result.text for result in seen] == ["ab", "ab"] and seen[0] is seen[1]


def test_a_closed_stream_keeps_only_what_was_delivered() -> None:
    stream = TextStream()
    stream.start(producing(stream, ["one", " two", " three"]))
    assert next(stream) == "one"
    stream.close()
    assert stream.result is not None
    assert (stream.result.text, stream.result.finish_reason) == ("one", FINISH_CANCELLED)
