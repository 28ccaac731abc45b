"""The process's orderly end: stop the work in flight, then free native resources, while the interpreter still runs.

Why it exists: llama.cpp runs its own C++ threads (the task loop, an HTTP listener) and torch/llama.cpp share one
OpenMP runtime. Left to the interpreter's teardown, a model is either never freed (its threads still decode a
cancelled reply's last token while ``exit()`` destroys the C++ statics they use: SIGSEGV) or its computation is cut
off inside a daemon thread ("FATAL: exception not rethrown", "terminate called without an active exception"), and a
reply being streamed is lost. So every exit path (the CLI, the GUI, the server, and the Python API through
``atexit``) runs the same steps, in this order, once:

1. every piece of work registered with ``stops_at_shutdown`` (a reply being generated, a company or evolution run)
   is cancelled, and waited for until it has left its ``with`` block: a reply's partial text is then saved;
2. the hooks registered with ``on_shutdown`` run in order: every engine unloads its model on its worker thread
   (``LocalLLMEngine``), so llama.cpp's threads are joined before the interpreter goes.

The whole is bounded (``deadline_s``): a process that must end, ends; what did not finish in time is logged.
"""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# Enough for a cancelled reply to stop (one token) and its history to be written, and for a model to be freed. A
# company run may take longer to write its summary; what has not ended by then is reported in the log.
DEFAULT_DEADLINE_S = 20.0
# Kept back from the work for the hooks: freeing a model takes well under a second, and a hook that runs out of
# time gives up (a model not freed) rather than race the interpreter's exit.
RELEASE_RESERVE_S = 5.0

_lock = threading.Lock()
_running: dict[object, tuple[Callable[[], Callable[[], None] | None], threading.Event]] = {}
_hooks: list[Callable[[float], None]] = []
_started = threading.Event()
_finished = threading.Event()


@contextmanager
def stops_at_shutdown(cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs, a shutdown calls ``cancel()`` and waits for the block to end (up to its deadline).
    A bound method is held weakly, so an abandoned stream can still be garbage-collected (and so closed)."""
    reference = weakref.WeakMethod(cancel) if inspect.ismethod(cancel) else (lambda strong=cancel: strong)
    ended = threading.Event()
    key = object()
    with _lock:
        _running[key] = (reference, ended)
    if _started.is_set():
        cancel()  # started during the shutdown: stop at once
    del cancel  # this frame must not keep a stream alive that its reader dropped
    try:
        yield
    finally:
        with _lock:
            _running.pop(key, None)
        ended.set()


def on_shutdown(hook: Callable[[float], None]) -> None:
    """Run ``hook(deadline)`` at shutdown once all registered work has stopped (hooks run in the order they were
    added). ``deadline`` is a ``time.monotonic()`` value the hook must not wait past."""
    with _lock:
        _hooks.append(hook)


def is_shutting_down() -> bool:
    """True from the moment the shutdown starts: long work checks it to stop and new work refuses to start."""
    return _started.is_set()


def shutdown(deadline_s: float = DEFAULT_DEADLINE_S) -> None:
    """Stop the work in flight, then run the hooks, at most once per process (later calls wait for the first)."""
    # A stream its reader dropped without closing it is freed only by the cycle collector (stream and generator
    # refer to each other); collected now, it is closed now, instead of being waited for until the deadline.
    gc.collect()
    with _lock:
        first = not _started.is_set()
        _started.set()
        running = list(_running.values())
        hooks = list(_hooks)
    if not first:
        _finished.wait(deadline_s)
        return
    deadline = time.monotonic() + deadline_s
    work_deadline = deadline - min(RELEASE_RESERVE_S, deadline_s / 4)
    try:
        for reference, _ in running:
            cancel = reference()
            if cancel is not None:
                _quietly(cancel)
        for _, ended in running:
            if not ended.wait(max(0.0, work_deadline - time.monotonic())):
                logger.warning("Work still running at shutdown did not stop in time; its result may be lost")
                break
        for hook in hooks:
            _quietly(functools.partial(hook, deadline))
    finally:
        _finished.set()


def _quietly(step: Callable[[], None]) -> None:
    try:
        step()
    except Exception:  # noqa: BLE001 - one failed step must not skip the ones after it
        logger.exception("A shutdown step failed")


# atexit runs while the interpreter, its threads and the GIL still work normally (after non-daemon threads are
# joined, before modules are torn down): the last moment at which native objects can be freed in a defined order.
atexit.register(shutdown)
