"""Runs a chat reply off the UI thread and hands the UI batched updates (at most ``max_rate`` per second).

Pure Python (no Flet), so its timing logic is tested without a browser. A token arrives every ~40 ms from a small
local model and much faster from a server; redrawing the whole message for each one would flood the client.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from src.utils.generation import GenerationResult

logger = logging.getLogger(__name__)

TRACE_ENV = "HEARTH_UI_TRACE"


class ReplyPump:
    """Consume ``stream`` in a thread; call ``on_text(full_text_so_far)`` at most ``max_rate`` times a second (and
    once more at the end with the final text), then ``on_done(result, error)``."""

    def __init__(
        self,
        stream: Iterator[str],
        on_text: Callable[[str], None],
        on_done: Callable[[GenerationResult | None, BaseException | None], None],
        *,
        max_rate: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._on_text = on_text
        self._on_done = on_done
        self._interval = 1.0 / max_rate
        self._clock = clock
        self.updates = 0
        self.first_piece_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="hearth-reply", daemon=True)

    def start(self) -> "ReplyPump":
        self.thread.start()
        return self

    def _run(self) -> None:
        # benchmarks/ui_latency.py sets this to compare when a token left the engine with when it was on screen.
        trace_path = os.environ.get(TRACE_ENV)
        trace = open(trace_path, "a", encoding="utf-8") if trace_path else None
        parts: list[str] = []
        last_push = float("-inf")
        pushed_len = 0
        error: BaseException | None = None
        try:
            for piece in self._stream:
                parts.append(piece)
                if trace is not None:
                    trace.write(json.dumps({"t": time.time(), "text": "".join(parts)}) + "\n")
                if self.first_piece_at is None:
                    self.first_piece_at = self._clock()
                now = self._clock()
                if now - last_push >= self._interval:
                    text = "".join(parts)
                    self._push(text)
                    last_push, pushed_len = now, len(text)
        except BaseException as exc:  # shown by the UI as a banner, never a traceback
            error = exc
            logger.info("Reply failed: %s", exc)
        if trace is not None:
            trace.close()
        text = "".join(parts)
        if len(text) != pushed_len:
            self._push(text)
        self._on_done(getattr(self._stream, "result", None), error)

    def _push(self, text: str) -> None:
        self.updates += 1
        try:
            self._on_text(text)
        except Exception:  # a closed browser tab must not kill the reply (it is still saved)
            logger.exception("Could not show a reply update")
