"""The one interface every consumer of a language model goes through.

Give a ``ChatModel`` a list of ``ChatMessage`` and ``GenerationParams``; get back a ``TextStream``: an iterator of
text pieces that can be cancelled from any thread and that carries a ``GenerationResult`` (text, finish reason,
token counts, timings) once it ends. The local engine and remote OpenAI-compatible servers both implement it, so
chat, workflows and the server never know which one they have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Protocol

from src import settings as _settings
from src.errors import InvalidParameterError
from src.utils.shutdown import stops_at_shutdown

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidParameterError(f"Unknown message role {self.role!r}; expected one of {', '.join(ROLES)}.")

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = _settings.DEFAULT_MAX_NEW_TOKENS
    temperature: float = _settings.DEFAULT_TEMPERATURE
    top_p: float = _settings.DEFAULT_TOP_P
    top_k: int = _settings.DEFAULT_TOP_K
    repetition_penalty: float = _settings.DEFAULT_REPETITION_PENALTY
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (0.0 <= float(self.temperature) <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < float(self.top_p) <= 1.0, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be 0 (off) or a positive integer"),
            (0.0 < float(self.repetition_penalty) <= 10.0, "repetition_penalty must be in (0, 10]"),
            (self.seed is None or isinstance(self.seed, int), "seed must be an integer"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParameterError(message + ".")

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> "GenerationParams":
        """Build from keyword arguments, refusing unknown names instead of silently ignoring them."""
        return cls().updated(**kwargs)

    def updated(self, **kwargs: object) -> "GenerationParams":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown generation parameter(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None  # decode speed, after the first token
    total_s: float = 0.0


class FinishReason(StrEnum):
    """Why a generation ended (stored with each reply; OpenAI's names where OpenAI has one)."""

    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"
    ERROR = "error"


FINISH_STOP, FINISH_LENGTH = FinishReason.STOP, FinishReason.LENGTH
FINISH_CANCELLED, FINISH_ERROR = FinishReason.CANCELLED, FinishReason.ERROR


@dataclass
class GenerationResult:
    text: str
    model: str
    finish_reason: str
    stats: GenerationStats = field(default_factory=GenerationStats)
    # How many of the oldest non-system messages were left out so the prompt fits the model's context window.
    dropped_messages: int = 0
    # Set when the reply had to be shorter than asked because the prompt filled most of the context window.
    max_new_tokens_clamped_to: int | None = None


class TextStream(Iterator[str]):
    """An iterator of text pieces with ``cancel()`` (thread-safe) that owns its text (``text``: every piece it has
    delivered) and has a ``result`` once it has ended (as simonw/llm's ``Response``).

    Producers call ``start(pieces)`` with a generator that yields text and, before it returns, reports how it ended
    with ``finish(model, finish_reason, stats, ...)``: the text is the stream's own, so a producer never counts it
    twice. They watch ``stream.cancelled`` and may register ``on_cancel`` callbacks (e.g. close a socket); consumers
    may register ``on_done`` callbacks, called with the result when the stream has ended.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._result: GenerationResult | None = None
        self._parts: list[str] = []
        self._pieces: Iterator[str] = iter(())
        self._cancel_callbacks: list[Callable[[], None]] = []
        self._done_callbacks: list[Callable[[GenerationResult], None]] = []
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        """The text delivered so far (all of it once the stream has ended)."""
        return "".join(self._parts)

    @property
    def result(self) -> GenerationResult | None:
        return self._result

    @result.setter
    def result(self, result: GenerationResult | None) -> None:
        with self._lock:
            first = self._result is None and result is not None
            self._result = result
            callbacks = list(self._done_callbacks) if first else []
        for callback in callbacks:
            assert result is not None
            callback(result)

    def finish(self, model: str, finish_reason: str, stats: GenerationStats | None = None, **details: Any) -> GenerationResult:
        """The producer's last word: how the reply ended; the result's text is what this stream delivered."""
        self.result = GenerationResult(text=self.text, model=model, finish_reason=finish_reason,
                                       stats=stats or GenerationStats(), **details)  # fmt: skip
        return self.result  # type: ignore[return-value]

    def on_done(self, callback: Callable[[GenerationResult], None]) -> None:
        """``callback(result)`` once the stream has ended (now, if it has)."""
        with self._lock:
            self._done_callbacks.append(callback)
            result = self._result
        if result is not None:
            callback(result)

    def start(self, pieces: Iterator[str]) -> "TextStream":
        self._pieces = self._tracked(pieces)
        return self

    def _tracked(self, pieces: Iterator[str]) -> Iterator[str]:
        # A process that ends while the stream is read cancels it and waits for its producer's bookkeeping (a
        # reply's partial text is saved) before the model is freed: src/utils/shutdown.py.
        with stops_at_shutdown(self.cancel):
            yield from pieces

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._cancel_callbacks.append(callback)
            already = self.cancelled.is_set()
        if already:
            callback()

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            callbacks = list(self._cancel_callbacks)
        for callback in callbacks:
            callback()

    def close(self) -> None:
        """Cancel and let the producer finish its bookkeeping (its ``finally`` blocks run now)."""
        self.cancel()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self._parts.append(piece)
        return piece

    def collect(self) -> GenerationResult:
        """Consume the rest of the stream and return its result."""
        for _ in self:
            pass
        assert self.result is not None, "a producer must set result before it ends"
        return self.result

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChatModel(Protocol):
    """What chat, workflows and the server need from a language model, local or remote."""

    @property
    def model_name(self) -> str: ...

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream: ...


class StopStringFilter:
    """Cuts text at the first stop string, holding back just enough characters to never show half of one."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to show now; sets ``stopped`` once a stop string appeared."""
        if self.stopped:
            return ""
        if not self._stop:
            return text
        self._buffer += text
        hits = [i for i in (self._buffer.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self._buffer = self._buffer[: min(hits)], ""
            return out
        cut = len(self._buffer) - self._hold
        if cut <= 0:
            return ""
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out

    def flush(self) -> str:
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out


def as_chat_messages(messages: Sequence[ChatMessage | dict[str, str]]) -> list[ChatMessage]:
    """Accept ``ChatMessage`` objects or OpenAI-style ``{"role": ..., "content": ...}`` dicts."""
    out: list[ChatMessage] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            out.append(message)
        elif isinstance(message, dict) and isinstance(message.get("content"), str):
            out.append(ChatMessage(str(message.get("role")), message["content"]))
        else:
            raise InvalidParameterError(f"A message must have a role and a text content, got {message!r}.")
    if not out:
        raise InvalidParameterError("At least one message is needed.")
    return out
