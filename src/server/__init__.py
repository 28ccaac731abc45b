"""OpenAI-compatible local HTTP server (``python main.py serve``, or the switch in the GUI settings).

``create_app`` builds the ASGI app over the ``ChatModel`` interface; ``ServerController`` runs it in a background
thread; ``src.server.cli`` has the command line. Depends on ``src.utils`` only (never on the GUI). The names are
loaded when first used (``src.utils.lazy``): the CLI imports ``src.server.cli`` for every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from src.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from src.server.app import create_app, local_model_factory, local_model_ids
    from src.server.controller import ServerController, check_bind_security, is_loopback_host

__all__ = [
    "ServerController",
    "check_bind_security",
    "create_app",
    "is_loopback_host",
    "local_model_factory",
    "local_model_ids",
]
__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("create_app", "local_model_factory", "local_model_ids"), "src.server.app"),
    **dict.fromkeys(("ServerController", "check_bind_security", "is_loopback_host"), "src.server.controller"),
})  # fmt: skip
