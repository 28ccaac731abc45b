"""Fakes for tests about orchestration (what is sent, saved, cancelled), never about model quality.

``ScriptedFakeModel`` implements the ``ChatModel`` interface with replies written in advance; every feature that
uses it is also exercised on the real embedded model elsewhere in the suite.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from src.errors import ProviderError
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_STOP,
    ChatMessage,
    GenerationParams,
    GenerationStats,
    TextStream,
)


class ScriptedFakeModel:
    """Replies with the next scripted text, word by word; ``fail_after`` words raises a ProviderError instead."""

    def __init__(self, replies: Sequence[str], *, fail_after: int | None = None, name: str = "scripted-fake") -> None:
        self.replies = list(replies)
        self.fail_after = fail_after
        self.name = name
        self.calls: list[list[ChatMessage]] = []
        self.params: list[GenerationParams] = []

    @property
    def model_name(self) -> str:
        return self.name

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream:
        self.calls.append(list(messages))
        self.params.append(params)
        reply = self.replies.pop(0)
        stream = TextStream()
        return stream.start(self._words(stream, reply))

    def _words(self, stream: TextStream, reply: str) -> Iterator[str]:
        words = reply.split(" ")
        sent: list[str] = []
        finish = FINISH_ERROR
        try:
            for index, word in enumerate(words):
                if stream.cancelled.is_set():
                    finish = FINISH_CANCELLED
                    return
                if self.fail_after is not None and index == self.fail_after:
                    raise ProviderError("scripted failure")
                piece = word if index == 0 else " " + word
                sent.append(piece)
                yield piece
            finish = FINISH_STOP
        finally:
            if finish == FINISH_ERROR and stream.cancelled.is_set():
                finish = FINISH_CANCELLED
            stream.finish(self.name, finish, GenerationStats(prompt_tokens=1, completion_tokens=len(sent)))
