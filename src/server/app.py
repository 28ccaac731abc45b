"""The OpenAI-compatible HTTP API over Hearth's ``ChatModel`` interface (a Starlette ASGI app).

``create_app()`` builds the app; ``ServerController`` (controller.py) and ``main.py serve`` (cli.py) run it with
uvicorn. Endpoints: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /health`` (public), ``GET /metrics`` (Prometheus text).

How a generation request flows: the body is read with a size limit (413) and validated (OpenAI-style 400/404);
the request then waits its turn in a FIFO ``FairQueue`` (429 when too many wait); a worker thread calls
``model.stream()`` and iterates it, handing pieces to the event loop, which never blocks. Response headers are sent
only once the model accepted the request, so errors raised by ``stream()`` (context overflow, model cannot load)
still get a proper status. A task watches the connection the whole time: when the client disconnects, a waiting
request leaves the queue and a running one is cancelled (``TextStream.cancel()``); the slot is released when the
worker thread has really finished, so the next request never shares the engine with a dying one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src import settings as _settings
from src.errors import (
    ContextOverflowError,
    HearthError,
    InvalidParameterError,
    ModelNotDownloadedError,
    UnknownModelError,
)
from src.server import api_errors
from src.server.api_errors import APIError
from src.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from src.server.metrics import ServerMetrics
from src.server.openai_params import ParsedRequest, parse_chat_request, parse_completion_request
from src.server.scheduler import Abandoned, FairQueue, QueueFullError
from src.utils.generation import FINISH_LENGTH, ChatModel, GenerationResult
from src.utils.loopback import LoopbackGuard

logger = logging.getLogger(__name__)

ModelFactory = Callable[[str], ChatModel]
ModelLister = Callable[[], Sequence[str]]

_KNOWN_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
_PUBLIC_PATHS = ("/health",)
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # reverse proxies must not buffer the stream
]
_DONE = b"data: [DONE]\n\n"


def _dumps(value: Any, ensure_ascii: bool = False) -> str:
    """Compact JSON, as OpenAI sends it."""
    return json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))


# --- the local models (defaults) -----------------------------------------------------------------------------------


def local_model_factory(model_id: str) -> ChatModel:
    """The real thing: a catalog model served by the shared ``LocalLLMEngine``."""
    from src.utils.providers import LocalModelProvider

    return LocalModelProvider(model_id)


def local_model_ids() -> list[str]:
    """Catalog models that can answer now: the embedded one always, the others once fully downloaded."""
    from src.utils.catalog import all_entries, is_model_ready, model_dir

    return [entry.id for entry in all_entries() if entry.embedded or is_model_ready(model_dir(entry.id))]


# --- state ---------------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    model_factory: ModelFactory
    model_ids: ModelLister
    default_model: str
    api_key: str | None
    max_body_bytes: int
    max_tokens_limit: int
    default_max_tokens: int | None
    queue: FairQueue
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    _models: dict[str, ChatModel] = field(default_factory=dict)
    _models_lock: threading.Lock = field(default_factory=threading.Lock)
    _live: set[Any] = field(default_factory=set)

    def model(self, model_id: str) -> ChatModel:
        with self._models_lock:
            model = self._models.get(model_id)
            if model is None:
                model = self._models[model_id] = self.model_factory(model_id)
            return model

    def is_cached(self, model_id: str) -> bool:
        return model_id in self._models

    def track(self, response: _GenerationResponse, live: bool) -> None:
        with self._models_lock:
            if live:
                self._live.add(response)
            else:
                self._live.discard(response)

    def cancel_all(self) -> None:
        """Cancel every running or queued generation (any thread): the server is stopping."""
        with self._models_lock:
            live = list(self._live)
        for response in live:
            response.cancel_threadsafe()

    def sync_queue_gauges(self) -> None:
        self.metrics.queue_length.set(self.queue.waiting)
        self.metrics.active.set(self.queue.active)


def create_app(
    *,
    model_factory: ModelFactory | None = None,
    model_ids: ModelLister | None = None,
    default_model: str = _settings.DEFAULT_LOCAL_MODEL,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = _settings.SERVER_MAX_BODY_BYTES,
    max_tokens_limit: int = _settings.SERVER_MAX_TOKENS_LIMIT,
    default_max_tokens: int | None = None,
    max_queue: int = _settings.SERVER_MAX_QUEUE,
    slots: int = 1,
) -> Starlette:
    """The ASGI app. ``model_factory(model_id) -> ChatModel`` and ``model_ids() -> ids`` default to the local
    catalog and engine; tests inject others. ``api_key`` (when set) is required as ``Authorization: Bearer``
    everywhere but ``/health``. ``cors_origins`` empty = no CORS headers at all. ``max_queue`` bounds the requests
    waiting for the model (more get 429); ``slots`` is how many generate at once (1 for the local engine).
    ``default_max_tokens`` (None: the settings' ``max_new_tokens``) applies when a request sets no max_tokens."""
    state = ServerState(
        model_factory=model_factory or local_model_factory,
        model_ids=model_ids or local_model_ids,
        default_model=default_model,
        api_key=(api_key or "").strip() or None,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens,
        queue=FairQueue(slots=slots, max_waiting=max_queue),
    )
    state.queue._on_change = state.sync_queue_gauges

    async def list_models(request: Request) -> Response:
        ids = await anyio.to_thread.run_sync(_listed_ids, state)
        return JSONResponse({"object": "list", "data": [_model_card(i) for i in ids]})

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        ids = await anyio.to_thread.run_sync(_listed_ids, state)
        if model_id not in ids:
            raise api_errors.model_not_found(model_id, ids)
        return JSONResponse(_model_card(model_id))

    async def chat_completions(request: Request) -> Response:
        return await _generation_endpoint(request, state, parse_chat_request, chat=True)

    async def completions(request: Request) -> Response:
        return await _generation_endpoint(request, state, parse_completion_request, chat=False)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        state.sync_queue_gauges()
        return PlainTextResponse(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return APIError(405, f"Method {request.method} is not allowed on {request.url.path}.").response()
        return APIError(404, f"Invalid URL ({request.method} {request.url.path}).", code="unknown_url").response()

    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = []
    if state.api_key is None:
        # Keyless means loopback only (check_bind_security): then only requests for this listener, from its own
        # origin or the CORS origins allowed (src/utils/loopback.py). With a key, the key is the check.
        middleware.append(Middleware(LoopbackGuard, allowed_origins=tuple(cors_origins), refusal=_refusal))
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    middleware.append(Middleware(_MetricsAndSafetyNet, state=state))
    middleware.append(Middleware(_BearerAuth, api_key=state.api_key))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={APIError: api_error, 404: not_found, 405: not_found},
    )
    app.state.hearth = state
    return app


def _refusal(status: int, code: str, message: str) -> Response:
    return APIError(status, message, code=code).response()


def _listed_ids(state: ServerState) -> list[str]:
    ids = list(dict.fromkeys(state.model_ids()))
    return ids


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "hearth"}


# --- middleware ------------------------------------------------------------------------------------------------------


class _BearerAuth:
    """``Authorization: Bearer KEY`` on every path but /health, compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None or scope["type"] != "http" or scope["path"] in _PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        if not hmac.compare_digest(given, self._key):
            await api_errors.invalid_api_key().response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _MetricsAndSafetyNet:
    """Counts every answer by endpoint and status, and turns any unexpected exception into a clean 500 JSON
    (logged with its traceback here, never sent to the client)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in _KNOWN_ENDPOINTS else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status: int | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            logger.exception("Unexpected error while answering %s %s", scope.get("method"), path)
            if status is None:
                await api_errors.internal_error().response()(scope, receive, send_and_watch)
        finally:
            answered = status if status is not None else 499  # the client left before any answer
            self.metrics.requests.inc(endpoint=endpoint, status=str(answered))
            if answered >= 400 and answered != 499:
                self.metrics.errors.inc(endpoint=endpoint, code=str(answered))


# --- generation endpoints --------------------------------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> Any:
    # A cross-site page can POST text/plain without asking first (no CORS preflight); JSON it cannot.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(415, f"Send the body as JSON, with the header 'Content-Type: application/json' (this request "
                       f"said {media_type[:60] or 'nothing'!r}).", code="unsupported_media_type")  # fmt: skip
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(request, limit)
        raise api_errors.body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            await _drain(request, limit)
            raise api_errors.body_too_large(limit)
    if not body:
        raise api_errors.bad_request("The request has no body; send a JSON object.")
    try:
        return json.loads(body)
    except RecursionError:
        raise api_errors.bad_request("The JSON body of your request is nested too deeply.", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise api_errors.bad_request(
            f"We could not parse the JSON body of your request ({exc}). The body must be valid JSON.",
            code="invalid_json",
        ) from None


async def _drain(request: Request, limit: int) -> None:
    """Read (and drop) what the client still sends, up to a bound, so it can read our 413 instead of failing to
    write into a closed socket."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > 16 * limit:
                break
    except Exception:
        logger.debug("stopped draining an oversized body", exc_info=True)


async def _generation_endpoint(
    request: Request, state: ServerState, parse: Callable[..., ParsedRequest], *, chat: bool
) -> Response:
    arrived = time.monotonic()
    body = await _read_json(request, state.max_body_bytes)
    default_max = state.default_max_tokens or _settings.get_settings().max_new_tokens
    parsed = parse(
        body,
        default_model=state.default_model,
        max_tokens_limit=state.max_tokens_limit,
        default_max_tokens=default_max,
    )
    if not state.is_cached(parsed.model):
        ids = await anyio.to_thread.run_sync(_listed_ids, state)
        if parsed.model not in ids:
            raise api_errors.model_not_found(parsed.model, ids)
    return _GenerationResponse(state, parsed, chat=chat, arrived=arrived)


_GONE = object()


def _shutting_down_error() -> APIError:
    return APIError(503, "The server is shutting down; the request was stopped.", type=api_errors.SERVER_ERROR,
                    code="server_shutting_down")  # fmt: skip


class _GenerationResponse(Response):
    """Queues, generates in a worker thread and answers (SSE or JSON), cancelling when the client leaves."""

    def __init__(self, state: ServerState, parsed: ParsedRequest, *, chat: bool, arrived: float) -> None:
        super().__init__()
        self.state, self.parsed, self.chat, self.arrived = state, parsed, chat, arrived
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self._cancel_requested = threading.Event()
        self._text_stream: Any = None
        self._items: asyncio.Queue[Any] | None = None
        self._finished = False  # the worker's last item ("end" or "error") was received
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: asyncio.Event | None = None
        self._shutting_down = False  # cancelled by the server stopping, not by the client leaving

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        self._gone = gone
        self._loop = asyncio.get_running_loop()
        self._items = asyncio.Queue()
        watcher = asyncio.create_task(self._watch_disconnect(receive, gone))
        self.state.track(self, True)
        try:
            await self._serve(send, gone)
        finally:
            self.state.track(self, False)
            watcher.cancel()
            # Normal end, client gone, or the task cancelled (server shutdown): never leave a generation running
            # for nobody. Cancelling a stream that has already ended is a no-op.
            if not self._finished:
                self._cancel_requested.set()
                stream = self._text_stream
                if stream is not None:
                    stream.cancel()

    async def _watch_disconnect(self, receive: Receive, gone: asyncio.Event) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                self._cancel()
                return

    def cancel_threadsafe(self) -> None:
        """Stop this request as if its client had left (server shutdown); callable from any thread."""
        loop, gone = self._loop, self._gone
        if loop is None or gone is None or loop.is_closed():
            return

        def cancel() -> None:
            if not gone.is_set():
                self._shutting_down = True
                gone.set()
                self._cancel()

        try:
            loop.call_soon_threadsafe(cancel)
        except RuntimeError:
            pass

    def _cancel(self) -> None:
        """The client went away (loop thread): stop the generation, wake the consumer."""
        self._cancel_requested.set()
        stream = self._text_stream
        if stream is not None:
            stream.cancel()
        assert self._items is not None
        self._items.put_nowait(_GONE)

    async def _serve(self, send: Send, gone: asyncio.Event) -> None:
        state, metrics = self.state, self.state.metrics
        try:
            await state.queue.acquire(gone)
        except QueueFullError as exc:
            await self._send_error(send, api_errors.queue_full(exc.waiting))
            return
        except Abandoned:
            logger.debug("%s: the client left while queued", self.id)
            if self._shutting_down:
                await self._send_error(send, _shutting_down_error())
            return
        metrics.queue_wait.observe(time.monotonic() - self.arrived)
        loop = asyncio.get_running_loop()
        worker = threading.Thread(target=self._produce, args=(loop,), name="hearth-serve-generate", daemon=True)
        try:
            worker.start()
        except BaseException:
            state.queue.release()
            raise
        if self.parsed.stream:
            await self._answer_stream(send)
        else:
            await self._answer_json(send)

    # --- worker thread ---

    def _produce(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._items is not None
        items = self._items

        def push(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server stopped
                self._cancel_requested.set()

        stream = None
        try:
            model = self.state.model(self.parsed.model)
            stream = model.stream(self.parsed.messages, self.parsed.params)
            self._text_stream = stream
            if self._cancel_requested.is_set():
                stream.cancel()
            push(("start", None))
            for piece in stream:
                if piece:
                    push(("piece", piece))
            push(("end", stream.result))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which answers or logs it
            push(("error", exc))
        finally:
            if stream is not None and self._cancel_requested.is_set():
                try:
                    stream.close()
                except Exception:
                    logger.debug("closing a cancelled stream failed", exc_info=True)
            self.state.queue.release_threadsafe()

    # --- answers ---

    async def _next(self) -> Any:
        assert self._items is not None
        item = await self._items.get()
        if item is not _GONE and item[0] in ("end", "error"):
            self._finished = True
        return item

    async def _send_error(self, send: Send, error: APIError) -> None:
        body = _dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _error_for(self, exc: BaseException) -> APIError:
        if isinstance(exc, ContextOverflowError):
            return api_errors.bad_request(str(exc), "messages", "context_length_exceeded")
        if isinstance(exc, InvalidParameterError):
            return api_errors.bad_request(str(exc))
        if isinstance(exc, (UnknownModelError, ModelNotDownloadedError)):
            return APIError(404, str(exc), param="model", code="model_not_found")
        if isinstance(exc, HearthError):
            return APIError(500, str(exc), type=api_errors.SERVER_ERROR, code="model_error")
        logger.error("Generation failed for %s", self.id, exc_info=(type(exc), exc, exc.__traceback__))
        return api_errors.internal_error()

    def _record(self, result: GenerationResult | None, first_token_at: float | None) -> None:
        metrics = self.state.metrics
        model = self.parsed.model
        metrics.set_model(model)
        if first_token_at is not None:
            metrics.ttft.observe(first_token_at - self.arrived)
        if result is None:
            return
        metrics.prompt_tokens.inc(result.stats.prompt_tokens, model=model)
        metrics.completion_tokens.inc(result.stats.completion_tokens, model=model)
        if result.stats.tokens_per_s:
            metrics.tokens_per_s.observe(result.stats.tokens_per_s)

    def _usage(self, result: GenerationResult | None) -> dict[str, int]:
        prompt = result.stats.prompt_tokens if result else 0
        completion = result.stats.completion_tokens if result else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _finish_reason(result: GenerationResult | None) -> str:
        return "length" if result is not None and result.finish_reason == FINISH_LENGTH else "stop"

    async def _generation_started(self, send: Send) -> bool:
        """Wait for the worker's first item; when the client left or the model failed to start, answer (or not)
        and return False. Nothing has been sent before this, so a failure is still a plain HTTP error."""
        first = await self._next()
        if first is _GONE:
            self._on_gone()
            if self._shutting_down:
                await self._send_error(send, _shutting_down_error())
            return False
        if first[0] == "error":
            await self._send_error(send, self._error_for(first[1]))
            return False
        return True

    async def _answer_json(self, send: Send) -> None:
        if not await self._generation_started(send):
            return
        pieces: list[str] = [self.parsed.echo] if self.parsed.echo else []
        first_token_at = None
        while True:
            item = await self._next()
            if item is _GONE:
                self._on_gone()
                if self._shutting_down:
                    await self._send_error(send, _shutting_down_error())
                return
            kind, value = item
            if kind == "piece":
                if first_token_at is None:
                    first_token_at = time.monotonic()
                pieces.append(value)
            elif kind == "error":
                await self._send_error(send, self._error_for(value))
                return
            else:
                result: GenerationResult | None = value
                break
        self._record(result, first_token_at)
        text = "".join(pieces)
        finish = self._finish_reason(result)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            payload = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.parsed.model,
                       "system_fingerprint": None, "choices": [choice], "usage": self._usage(result)}  # fmt: skip
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            payload = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.parsed.model,
                       "system_fingerprint": None, "choices": [choice], "usage": self._usage(result)}  # fmt: skip
        body = _dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _on_gone(self) -> None:
        self.state.metrics.cancelled.inc()
        logger.debug("%s: the client disconnected; generation cancelled", self.id)

    def _chunk_codec(self) -> tuple[bytes, bytes, Callable[[dict[str, Any]], bytes]]:
        """(prefix, suffix) around a JSON-encoded piece of text, and an encoder for whole chunks: the per-token
        path only encodes the piece itself."""
        usage_null = self.parsed.include_usage
        head: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.parsed.model,
            "system_fingerprint": None,
        }

        def encode(chunk: dict[str, Any]) -> bytes:
            return b"data: " + _dumps({**head, **chunk}).encode() + b"\n\n"

        marker = "\u0000PIECE\u0000"
        if self.chat:
            template = {"choices": [{"index": 0, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}]}
        else:
            template = {"choices": [{"text": marker, "index": 0, "logprobs": None, "finish_reason": None}]}
        if usage_null:
            template["usage"] = None
        encoded = encode(template)
        quoted = _dumps(marker).encode()
        prefix, _, suffix = encoded.partition(quoted)
        return prefix, suffix, encode

    async def _answer_stream(self, send: Send) -> None:
        if not await self._generation_started(send):
            return
        prefix, suffix, encode = self._chunk_codec()
        usage_null: dict[str, Any] = {"usage": None} if self.parsed.include_usage else {}
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if self.chat:
            opening = encode({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}], **usage_null})  # fmt: skip
        elif self.parsed.echo:
            opening = prefix + _dumps(self.parsed.echo).encode() + suffix
        else:
            opening = b""
        if opening:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
        first_token_at: float | None = None
        result: GenerationResult | None = None
        failure: BaseException | None = None
        items = self._items
        assert items is not None
        finished = False
        while not finished:
            batch = [await items.get()]
            while not items.empty():  # whatever else is ready goes out in the same write
                batch.append(items.get_nowait())
            out = bytearray()
            for item in batch:
                if item is _GONE:
                    self._record(None, first_token_at)
                    self._on_gone()
                    if self._shutting_down:
                        event = b"data: " + _dumps(_shutting_down_error().body()).encode() + b"\n\n"
                        await send({"type": "http.response.body", "body": bytes(out) + event, "more_body": False})
                    return
                kind, value = item
                if kind == "piece":
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                    out += prefix + _dumps(value).encode() + suffix
                elif kind == "end":
                    result, finished = value, True
                    self._finished = True
                    break
                else:
                    failure, finished = value, True
                    self._finished = True
                    break
            if out:
                await send({"type": "http.response.body", "body": bytes(out), "more_body": True})
        self._record(result, first_token_at)
        tail = bytearray()
        if failure is not None:
            error = self._error_for(failure)
            self.state.metrics.errors.inc(endpoint=self._endpoint(), code="mid_stream")
            tail += b"data: " + _dumps(error.body()).encode() + b"\n\n"
        else:
            finish = self._finish_reason(result)
            if self.chat:
                tail += encode({"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}],
                                **usage_null})  # fmt: skip
            else:
                tail += encode({"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                                **usage_null})  # fmt: skip
            if self.parsed.include_usage:
                tail += encode({"choices": [], "usage": self._usage(result)})
            tail += _DONE
        await send({"type": "http.response.body", "body": bytes(tail), "more_body": False})

    def _endpoint(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"
