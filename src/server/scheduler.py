"""A fair (first come, first served) queue in front of the model, with a bounded number of waiters.

The local engine generates one reply at a time; without a queue, requests would race for its lock and a late one
could overtake an early one. ``FairQueue`` hands the slot over directly to the oldest waiter on release (no
barging), refuses new waiters beyond ``max_waiting`` (the server answers 429), and forgets a waiter whose client
went away. All methods run on the event loop's thread, except ``release_threadsafe`` which any thread may call.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class QueueFullError(Exception):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} requests are waiting")
        self.waiting = waiting


class Abandoned(Exception):
    """The client disconnected while its request waited for the model."""


class FairQueue:
    def __init__(self, slots: int = 1, max_waiting: int = 32, on_change: Callable[[], None] | None = None) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._free = slots
        self.slots = slots
        self.max_waiting = max_waiting
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change = on_change or (lambda: None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def active(self) -> int:
        return self.slots - self._free

    async def acquire(self, gone: asyncio.Event) -> None:
        """Wait for the slot in arrival order. Raises ``QueueFullError`` at once when too many wait, ``Abandoned``
        when ``gone`` is set first (the waiter is then removed and never takes the slot)."""
        self._loop = asyncio.get_running_loop()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._on_change()
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFullError(len(self._waiters))
        turn: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(turn)
        self._on_change()
        gone_wait = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({turn, gone_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._give_up(turn)
            raise
        finally:
            gone_wait.cancel()
        if turn.done():
            if gone.is_set():  # got the slot and the client is gone at the same moment: pass it on
                self.release()
                raise Abandoned()
            return
        self._give_up(turn)
        raise Abandoned()

    def _give_up(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self.release()  # the slot was handed over to us just now
            return
        turn.cancel()
        try:
            self._waiters.remove(turn)
        except ValueError:
            pass
        self._on_change()

    def release(self) -> None:
        """Give the slot to the oldest live waiter, or free it."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                self._on_change()
                return
        self._free += 1
        self._on_change()

    def release_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.release)
