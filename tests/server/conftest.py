"""Fixtures: a real uvicorn server on 127.0.0.1 (a free port) in a background thread, per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from src.server import ServerController, create_app
from tests.server.fakes import KeyedScriptedFakeModel

FAKE_MODEL = "scripted-fake"
REAL_MODEL = "smollm2-135m"


@contextmanager
def running(app: Any) -> Iterator[ServerController]:
    controller = ServerController(port=0, app=app)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerController]]:
    """``serve(app)`` starts ``app`` on a free 127.0.0.1 port and returns its controller (stopped afterwards)."""
    stack: list[Any] = []

    def start(app: Any) -> ServerController:
        context = running(app)
        controller = context.__enter__()
        stack.append(context)
        return controller

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def fake_app(model: KeyedScriptedFakeModel, **kwargs: Any) -> Any:
    """An app serving only ``model`` under the id ``scripted-fake``."""
    return create_app(
        model_factory=lambda model_id: model,
        model_ids=lambda: [FAKE_MODEL],
        default_model=FAKE_MODEL,
        **kwargs,
    )
