"""Run the server with uvicorn: in a background thread (``ServerController``, for the GUI switch and tests) or in
the foreground (``serve_forever``, for ``main.py serve``).

Security rule: a loopback host (127.0.0.0/8, ::1, localhost) may serve without a key; any other host needs an API
key, or starting refuses with ``InsecureServerBindError``. The listening socket is bound before uvicorn starts, so a
port in use is reported at once as ``ServerStartError`` and port 0 picks a free port (see ``port``/``url``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Self

from src import settings as _settings
from src.errors import InsecureServerBindError, ServerStartError
from src.utils.loopback import bind_socket, is_loopback_host, serve_in_foreground

logger = logging.getLogger(__name__)


def check_bind_security(host: str, api_key: str | None) -> None:
    """Raise ``InsecureServerBindError`` for a non-loopback host without an API key."""
    if not is_loopback_host(host) and not (api_key or "").strip():
        raise InsecureServerBindError(host)


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class ServerController:
    """Start and stop the server in a background thread, e.g. from the GUI's settings switch::

        controller = ServerController(port=8765)       # 127.0.0.1, no key; api_key=... for a LAN host
        controller.start()                              # raises ServerError subclasses with a clear message
        controller.url, controller.is_running           # "http://127.0.0.1:8765", True
        controller.stop()

    ``app`` defaults to ``create_app(api_key=..., cors_origins=..., default_model=model)`` over the local engine.
    """

    def __init__(
        self,
        host: str = _settings.SERVER_DEFAULT_HOST,
        port: int = _settings.SERVER_DEFAULT_PORT,
        *,
        api_key: str | None = None,
        cors_origins: Sequence[str] = (),
        model: str | None = None,
        app: Any = None,
        log_level: str = "warning",
        access_log: bool = False,
    ) -> None:
        self.host = host
        self.api_key = (api_key or "").strip() or None
        self._requested_port = port
        self._cors_origins = tuple(cors_origins)
        self._model = model
        self._app = app
        self._log_level = log_level
        self._access_log = access_log
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str | None:
        """The server's base URL (without /v1) while it runs, else None."""
        return _url(self.host, self._port) if self._port is not None and self.is_running else None

    @property
    def api_base_url(self) -> str | None:
        """What OpenAI clients take as ``base_url``: ``<url>/v1``."""
        url = self.url
        return url + "/v1" if url else None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._server is not None and self._server.started

    @property
    def app(self) -> Any:
        if self._app is None:
            from src.server.app import create_app

            kwargs: dict[str, Any] = {"api_key": self.api_key, "cors_origins": self._cors_origins}
            if self._model:
                kwargs["default_model"] = self._model
            self._app = create_app(**kwargs)
        return self._app

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; returns the URL once uvicorn accepts connections. Idempotent while running."""
        import uvicorn

        with self._lock:
            if self.is_running:
                return self.url or ""
            check_bind_security(self.host, self.api_key)
            sock = bind_socket(self.host, self._requested_port)
            self._port = int(sock.getsockname()[1])
            config = uvicorn.Config(
                self.app,
                log_level=self._log_level,
                access_log=self._access_log,
                lifespan="off",
                timeout_graceful_shutdown=int(_settings.SERVER_GRACEFUL_SHUTDOWN_S),
            )
            server = uvicorn.Server(config)
            self._server = server
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    server.run(sockets=[sock])
                except BaseException as exc:
                    failure.append(exc)
                    logger.exception("The API server stopped with an error")
                finally:
                    sock.close()

            self._thread = threading.Thread(target=run, name="hearth-api-server", daemon=True)
            self._thread.start()
            started = threading.Event()
            for _ in range(int(timeout / 0.01)):
                if server.started or not self._thread.is_alive():
                    break
                started.wait(0.01)
            if not server.started:
                self._stop_locked(2.0)
                detail = f"{type(failure[0]).__name__}: {failure[0]}" if failure else "it did not start in time"
                raise ServerStartError(self.host, self._requested_port, detail)
            logger.info("OpenAI-compatible server listening on %s/v1", self.url)
            return self.url or ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end open streams (their generations are cancelled) and wait for the thread."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        _cancel_open_requests(self._app)
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(
    host: str,
    port: int,
    app: Any,
    *,
    api_key: str | None,
    log_level: str = "info",
    on_started: Any = None,
) -> None:
    """Serve in the calling (main) thread until Ctrl+C / SIGTERM (uvicorn's own signal handling)."""
    check_bind_security(host, api_key)
    sock = bind_socket(host, port)
    if on_started is not None:
        on_started(_url(host, int(sock.getsockname()[1])))
    serve_in_foreground(app, sock, on_exit_signal=lambda: _cancel_open_requests(app), log_level=log_level,
                        lifespan="off", timeout_graceful_shutdown=int(_settings.SERVER_GRACEFUL_SHUTDOWN_S))  # fmt: skip


def _cancel_open_requests(app: Any) -> None:
    """Open streams end now, with a "server shutting down" event, instead of holding the shutdown for uvicorn's
    grace period and then being cancelled mid-write."""
    state = getattr(getattr(app, "state", None), "hearth", None)
    if state is not None:
        state.cancel_all()
