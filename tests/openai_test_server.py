"""A real, scriptable OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only, no pytest needed).

Usage::

    from tests.openai_test_server import OpenAITestServer, ServerScript, unused_port

    with OpenAITestServer(reply="Hello there", api_key="sk-test", chunk_delay_s=0.01) as server:
        provider = OpenAICompatibleProvider(server.base_url, "test-model", "sk-test")
        ...
        server.script.reply = "Something else"      # the script can change between requests
        body = server.last_request().body            # what the client sent (parsed JSON)
        assert server.wait_for_disconnect(2.0)       # the client went away mid-reply

Endpoints (under ``/v1``): ``POST /chat/completions`` (streamed as ``chat.completion.chunk`` server-sent events
exactly like OpenAI, or a ``chat.completion`` object when ``stream`` is false) and ``GET /models``. Anything else
gets OpenAI's 404 ``Invalid URL`` error. Every response carries ``Connection: close``.

The server notices a client that disconnects mid-reply both when a write fails (``BrokenPipeError`` /
``ConnectionResetError``) and while it waits between chunks or before the headers (the socket turns readable at
EOF), like uvicorn does; it then stops the reply and sets ``client_disconnected``.

Run ``python -m tests.openai_test_server --port 8000`` to point the app at it by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"


@dataclass
class ServerScript:
    """How the server behaves. Mutable: tests may change fields between requests."""

    reply: str = "Hello! I am a scripted test server streaming this reply word by word."
    # Bearer key the server demands; None accepts any request (with or without Authorization).
    api_key: str | None = None
    # Model names served by /models and accepted by /chat/completions; others get 404 model_not_found.
    models: tuple[str, ...] = ("test-model",)
    chunk_delay_s: float = 0.0  # pause before each content chunk
    header_delay_s: float = 0.0  # pause before the response headers (to trigger client read timeouts)
    finish_reason: str = "stop"  # reported when the reply is not cut by max_tokens
    send_usage: bool = True  # send the usage chunk when the client asks with stream_options.include_usage
    honor_stop: bool = True  # cut the reply at the request's "stop" strings, as real servers do
    ignore_stream: bool = False  # answer with a chat.completion object even when stream is true
    # Make every request fail with this status and body (a dict is sent as JSON, a str as text/plain).
    error_status: int | None = None
    error_body: dict[str, Any] | str | None = None
    # Replace the generated event stream by these exact fragments (each one written as it is, e.g.
    # "data: {broken\n\n"), with chunk_delay_s before each; for malformed-stream and error-event tests.
    raw_stream: list[str] | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw_body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def unused_port() -> int:
    """A 127.0.0.1 port that was just bound and closed: connecting to it is refused (nothing listens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_words(text: str) -> list[str]:
    """Word-by-word pieces whose concatenation is exactly ``text`` (leading spaces stay with their word)."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        pieces.append(tail)
    return pieces


def count_tokens(text: str) -> int:
    """The server's notion of a token: a word. Enough for usage numbers that tests can predict."""
    return len(text.split())


class _ClientGone(Exception):
    """The client disconnected mid-reply."""


class _Stopping(Exception):
    """The server is shutting down; abandon the reply without blaming the client."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer encoding for streams, as OpenAI does
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        logger.debug("test server: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    # --- dispatch ---

    def _handle(self) -> None:
        owner = self.server.owner
        script = dataclasses.replace(owner.script)  # a snapshot: a test may edit the script mid-reply
        self.close_connection = True
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = urlsplit(self.path).path
        owner._record(
            RecordedRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body, raw)
        )
        try:
            self._pause(script.header_delay_s)
            self._route(script, path, body, raw)
        except _ClientGone:
            logger.debug("test server: client disconnected during %s %s", self.command, path)
            owner._note_disconnect()
        except _Stopping:
            pass

    def _route(self, script: ServerScript, path: str, body: Any, raw: bytes) -> None:
        if script.api_key is not None and self.headers.get("Authorization") != f"Bearer {script.api_key}":
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if given:
                # OpenAI masks all but the ends of a wrong key; never echo it whole.
                message = f"Incorrect API key provided: {given[:3]}***{given[-2:]}. Check your API key."
            else:
                message = "You didn't provide an API key. Provide it in the Authorization header (Bearer auth)."
            self._send_error(401, message, "invalid_request_error", "invalid_api_key")
            return
        if script.error_status is not None:
            if isinstance(script.error_body, dict):
                self._send_json(script.error_status, script.error_body)
            else:
                self._send_bytes(script.error_status, (script.error_body or "").encode(), "text/plain; charset=utf-8")
            return
        if self.command == "GET" and path == f"{API_PREFIX}/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": 1700000000, "owned_by": "hearth-tests"}
                        for name in script.models
                    ],
                },
            )
        elif self.command == "POST" and path == f"{API_PREFIX}/chat/completions":
            self._chat(script, body, raw)
        else:
            self._send_error(404, f"Invalid URL ({self.command} {path})", "invalid_request_error", None)

    # --- chat ---

    def _chat(self, script: ServerScript, body: Any, raw: bytes) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
            return
        model = body.get("model")
        if model not in script.models:
            self._send_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
            return
        reply = script.reply
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
        if script.honor_stop and stops:
            cut = min((i for i in (reply.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                reply = reply[:cut]
        pieces = split_words(reply)
        finish_reason = script.finish_reason
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and len(pieces) > max_tokens:
            pieces, finish_reason = pieces[:max_tokens], "length"
        prompt_tokens = sum(
            count_tokens(m.get("content") or "") for m in body["messages"] if isinstance(m, dict)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream") is not True or script.ignore_stream:
            self._send_json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(pieces)},
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self._end_headers()
        if script.raw_stream is not None:
            for fragment in script.raw_stream:
                self._pause(script.chunk_delay_s)
                self._write_chunk(fragment.encode())
            self._write_chunk(b"")
            return

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            event: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_hearth_tests",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None  # OpenAI sends null on every chunk but the usage chunk
            return event

        self._send_event(chunk({"role": "assistant", "content": ""}, None))
        for piece in pieces:
            self._pause(script.chunk_delay_s)
            self._send_event(chunk({"content": piece}, None))
        self._send_event(chunk({}, finish_reason))
        if include_usage and script.send_usage:
            final = chunk({}, None)
            final["choices"], final["usage"] = [], usage
            self._send_event(final)
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    # --- I/O ---

    def _send_error(self, status: int, message: str, kind: str, code: str | None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self._end_headers()
        self._write(data)

    def _send_event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _end_headers(self) -> None:
        try:
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise _ClientGone from exc

    def _write_chunk(self, data: bytes) -> None:
        """One HTTP/1.1 chunk; empty data writes the terminating chunk."""
        self._write(b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.server.owner._stopping.is_set():
            raise _Stopping
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise _ClientGone from exc

    def _pause(self, seconds: float) -> None:
        """Sleep, but notice at once if the client hangs up (its socket turns readable at EOF) or we stop."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.server.owner._stopping.is_set():
                raise _Stopping
            readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError as exc:
                    raise _ClientGone from exc
                if not peeked:
                    raise _ClientGone
                # Bytes from the client (not ours to read now): keep waiting without spinning on select.
                time.sleep(min(remaining, 0.01))


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler never blocks interpreter exit
    owner: "OpenAITestServer"


class OpenAITestServer:
    """A scripted OpenAI-compatible server on 127.0.0.1 (a free port), served from a daemon thread.

    Construct with a ``ServerScript`` or its fields as keywords; use as a context manager or ``start()`` /
    ``stop()``. ``base_url`` ends in ``/v1``; ``root_url`` has no path (to test base URL normalisation).
    """

    def __init__(self, script: ServerScript | None = None, **script_fields: Any) -> None:
        self.script = dataclasses.replace(script or ServerScript(), **script_fields)
        self.client_disconnected = threading.Event()
        self.disconnects = 0
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> "OpenAITestServer":
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server", daemon=True
        )
        self._thread.start()
        logger.debug("test server listening on %s", self.root_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # handlers still pausing or writing give up
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the test server is not running")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}{API_PREFIX}"

    # --- observations ---

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def last_request(self) -> RecordedRequest:
        requests = self.requests
        if not requests:
            raise AssertionError("the test server has received no request")
        return requests[-1]

    def wait_for_disconnect(self, timeout: float) -> bool:
        return self.client_disconnected.wait(timeout)

    def reset(self) -> None:
        """Forget recorded requests and disconnects (the script stays)."""
        with self._lock:
            self._requests.clear()
            self.disconnects = 0
            self.client_disconnected.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _note_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1
        self.client_disconnected.set()


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A scripted OpenAI-compatible server for manual testing.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reply", default=ServerScript.reply)
    parser.add_argument("--model", action="append", help="served model name (repeatable)")
    parser.add_argument("--api-key")
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    owner = OpenAITestServer(
        reply=args.reply,
        models=tuple(args.model or ServerScript.models),
        api_key=args.api_key,
        chunk_delay_s=args.chunk_delay,
    )
    server = _Server(("127.0.0.1", args.port), _Handler)
    server.owner = owner
    logger.info("serving on http://127.0.0.1:%d%s (Ctrl+C to stop)", args.port, API_PREFIX)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    _main()
