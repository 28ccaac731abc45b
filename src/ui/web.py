"""The GUI in a browser (``--web``, and the fallback when the desktop window cannot open), safe from other pages.

Flet's own web server accepts a WebSocket from any origin, answers any ``Host`` and sends
``Access-Control-Allow-Origin: *``: any site the user has open could read the chat list and click through the app
(switch its LLM server to the attacker's, start a ``/build``). So Hearth serves Flet's ASGI app itself, behind
``LoopbackGuard`` (src/utils/loopback.py): loopback ``Host`` and own ``Origin`` only, no CORS headers, and a key made
at each launch that the link carries (``?token=``, kept in a cookie after the first request, as Jupyter does). The
link is printed, and opened in the browser the way Flet would (not on a server without a desktop, nor with
``FLET_FORCE_WEB_SERVER``), through a private page that forwards to it (``opening_page``). The desktop window does not go through here: Flet connects it to the app itself.
"""

from __future__ import annotations

import html
import logging
import os
import secrets
import sys
import tempfile
import webbrowser
from pathlib import Path
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
    with tempfile.TemporaryDirectory(prefix="hearth-open-") as private:
        if not (get_bool_env_var("FLET_FORCE_WEB_SERVER") or is_linux_server() or os.environ.get("FLET_DISPLAY_URL_PREFIX")):
            # The socket already listens: the browser's first request waits for the server.
            webbrowser.open(opening_page(Path(private), url).as_uri())
        serve_in_foreground(
            LoopbackGuard(app, token=token, for_pages=True), sock, log_level="warning", lifespan="on",
            ws="websockets-sansio", timeout_graceful_shutdown=int(_settings.SERVER_GRACEFUL_SHUTDOWN_S),
        )  # fmt: skip


def opening_page(folder: Path, url: str) -> Path:
    """A page, readable by the user only, that sends the browser on to ``url``: opened instead of ``url`` itself,
    whose key would be on the browser's command line, which every user of the machine can list (as Jupyter does)."""
    page = folder / "open-hearth.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        shown = html.escape(url, quote=True)
        handle.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={shown}">'
                     f'<title>Hearth</title><p><a href="{shown}">Open Hearth</a></p>\n')  # fmt: skip
    return page
