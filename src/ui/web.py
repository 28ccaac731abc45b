"""The GUI in a browser (``--web``, and the fallback when the desktop window cannot open), safe from other pages.

Flet's own web server accepts a WebSocket from any origin, answers any ``Host`` and sends
``Access-Control-Allow-Origin: *``: any site the user has open could read the chat list and click through the app
(switch its LLM server to the attacker's, start a ``/build``). So Hearth serves Flet's ASGI app itself, behind
``LoopbackGuard`` (src/utils/loopback.py): loopback ``Host`` and own ``Origin`` only, no CORS headers, and a key made
at each launch that the link carries (``?token=``, kept in a cookie after the first request, as Jupyter does). The
link is printed, and opened in the browser the way Flet would (not on a server without a desktop, nor with
``FLET_FORCE_WEB_SERVER``). The desktop window does not go through here: Flet connects it to the app itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import webbrowser
from typing import Any

from src import settings as _settings
from src.utils.loopback import TOKEN_PARAMETER, LoopbackGuard, bind_socket, serve_in_foreground

logger = logging.getLogger(__name__)

_TOKEN_BYTES = 32


def serve_web_gui(main: Any, *, host: str, port: int, assets_dir: str) -> None:
    """Serve ``main`` (a Flet page function) on ``host``:``port`` until Ctrl+C or SIGTERM."""
    import flet
    from flet.utils import get_bool_env_var, is_linux_server
    from flet_web.fastapi.serve_fastapi_web_app import get_fastapi_web_app

    token = secrets.token_urlsafe(_TOKEN_BYTES)
    app = get_fastapi_web_app(
        main=main, before_main=None, page_name="", assets_dir=assets_dir, upload_dir=None,  # type: ignore[arg-type]
        web_renderer=flet.WebRenderer.AUTO, route_url_strategy=flet.RouteUrlStrategy.PATH, no_cdn=True,
    )  # fmt: skip
    sock = bind_socket(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/?{TOKEN_PARAMETER}={token}"
    print(f"Hearth is running at {url} (Ctrl+C to quit)", file=sys.stderr, flush=True)
    if not (get_bool_env_var("FLET_FORCE_WEB_SERVER") or is_linux_server() or os.environ.get("FLET_DISPLAY_URL_PREFIX")):
        webbrowser.open(url)  # the socket already listens: the browser's first request waits for the server
    serve_in_foreground(
        LoopbackGuard(app, token=token, drop_cors_headers=True), sock, log_level="warning", lifespan="on",
        ws="websockets-sansio", timeout_graceful_shutdown=int(_settings.SERVER_GRACEFUL_SHUTDOWN_S),
    )  # fmt: skip
