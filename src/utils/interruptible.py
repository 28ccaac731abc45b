"""Long work started from the terminal, stopped cleanly by Ctrl+C."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from src.utils.shutdown import stops_at_shutdown

CANCEL_GRACE_S = 120.0  # how long a cancelled run may take to finish its log, checkpoint or summary


def run_interruptibly(work: Callable[[], Any], cancel: threading.Event, stopping_message: str, name: str) -> Any:
    """Run ``work()`` in a worker thread; Ctrl+C sets ``cancel`` (the work then finishes what it must) instead of
    killing it half-way. Returns its result (None if it did not end within the grace time); re-raises its error.

    Why a worker and an Event: a KeyboardInterrupt lands in the main thread at any bytecode, which would leave logs
    and checkpoints half-written; and a ``Thread.join`` interrupted by Ctrl+C can report a live thread as finished.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            with stops_at_shutdown(cancel.set):  # an exit before the grace time is over still stops it first
                outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, re-raised there
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.set()
        print(f"\n[{stopping_message}]", file=sys.stderr, flush=True)
        done.wait(CANCEL_GRACE_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
