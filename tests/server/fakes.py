"""Fakes for the server's orchestration tests (queueing, disconnects, mix-ups), never about model quality.

The same endpoints are exercised with the real embedded model in test_real_model.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatMessage,
    GenerationParams,
    GenerationStats,
    TextStream,
)


class KeyedScriptedFakeModel:
    """Replies with the scripted text for the last user message (word by word, ``delay_s`` before each word), so
    concurrent requests that got each other's replies are detected. Records every stream, how many ran at once
    and the order in which requests started."""

    def __init__(
        self,
        replies: dict[str, str] | None = None,
        *,
        delay_s: float = 0.0,
        default_reply: str = "scripted fake reply",
        name: str = "scripted-fake",
        fail_with: BaseException | None = None,
        fail_on_stream: BaseException | None = None,
    ) -> None:
        self.replies = dict(replies or {})
        self.delay_s = delay_s
        self.default_reply = default_reply
        self.name = name
        self.fail_with = fail_with  # raised from the iteration after the first word
        self.fail_on_stream = fail_on_stream  # raised by stream() itself
        self.streams: list[TextStream] = []
        self.started_prompts: list[str] = []
        self.params: list[GenerationParams] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self.any_started = threading.Event()

    @property
    def model_name(self) -> str:
        return self.name

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream:
        if self.fail_on_stream is not None:
            raise self.fail_on_stream
        prompt = messages[-1].content
        reply = self.replies.get(prompt, self.default_reply)
        stream = TextStream()
        with self._lock:
            self.streams.append(stream)
            self.started_prompts.append(prompt)
            self.params.append(params)
        return stream.start(self._words(stream, reply, params))

    def _words(self, stream: TextStream, reply: str, params: GenerationParams) -> Iterator[str]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.any_started.set()
        sent: list[str] = []
        finish = FINISH_ERROR
        started = time.monotonic()
        try:
            for index, word in enumerate(reply.split(" ")):
                if self.delay_s and stream.cancelled.wait(self.delay_s):
                    finish = FINISH_CANCELLED
                    return
                if stream.cancelled.is_set():
                    finish = FINISH_CANCELLED
                    return
                if index >= params.max_new_tokens:
                    finish = FINISH_LENGTH
                    return
                if self.fail_with is not None and index == 1:
                    raise self.fail_with
                piece = word if index == 0 else " " + word
                sent.append(piece)
                yield piece
            finish = FINISH_STOP
        finally:
            with self._lock:
                self.running -= 1
            if finish == FINISH_ERROR and stream.cancelled.is_set():
                finish = FINISH_CANCELLED
            stream.finish(
                self.name,
                finish,
                GenerationStats(
                    prompt_tokens=3, completion_tokens=len(sent), time_to_first_token_s=0.001,
                    tokens_per_s=50.0, total_s=time.monotonic() - started,
                ),
            )
