"""Running a test in one sandbox mode (HEARTH_SANDBOX), skipped where that mode cannot run on this machine."""

from __future__ import annotations

import pytest

from src.sandbox import landlock
from src.sandbox.bubblewrap import find_bubblewrap
from src.settings import ENV_SANDBOX, SANDBOX_BUBBLEWRAP, SANDBOX_LANDLOCK, reload_settings


def use_sandbox_mode(mode: str, monkeypatch: pytest.MonkeyPatch) -> str:
    if mode == SANDBOX_BUBBLEWRAP and find_bubblewrap().found is None:
        pytest.skip(f"bubblewrap cannot start here: {find_bubblewrap().reason}")
    if mode == SANDBOX_LANDLOCK and landlock.unavailable_reason() is not None:
        pytest.skip(f"Landlock cannot run here: {landlock.unavailable_reason()}")
    monkeypatch.setenv(ENV_SANDBOX, mode)
    reload_settings()
    return mode
