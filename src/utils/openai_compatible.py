"""A ``ChatModel`` backed by any OpenAI-compatible HTTP server: Ollama, LM Studio, vLLM, llama.cpp, OpenAI.

The provider streams ``POST {base}/chat/completions`` as server-sent events and turns them into a ``TextStream``.

Where errors surface: ``stream()`` never touches the network and never raises for network or server problems. The
request is sent on the first ``next()`` of the returned stream, and every failure (unreachable server, timeout,
rejected key, unknown model, HTTP error, malformed reply) is raised from that iteration as a typed
``ProviderError`` subclass with a one-line message. Before raising, the stream's ``result`` is set with
``finish_reason == FINISH_ERROR`` and the text received so far, so a UI can keep the partial reply.
``list_models()`` and ``check_connection()`` are ordinary blocking calls and raise the same typed errors directly.

Cancelling: ``stream.cancel()`` (any thread) shuts down the request's socket, which wakes the thread blocked in
``recv`` at once and makes the server see the client disconnect (Ollama, vLLM and llama.cpp then stop generating).
This works while waiting for the response headers too (a local server can spend many seconds on a long prompt
or on loading a model): the socket is captured through httpcore's documented ``trace`` extension as soon as it
connects. For that capture to happen on every request, connections are not kept alive between requests; the
cost is one TCP (and TLS) handshake per reply, small next to generating one.

Proxies: the client honours the usual ``HTTP(S)_PROXY`` / ``NO_PROXY`` environment variables (``trust_env=True``)
so users behind a corporate proxy reach hosted APIs, but a loopback server (``localhost``, ``127.0.0.0/8``,
``::1``) is always reached directly: httpx does not bypass proxies for loopback by itself, and a system proxy
must never intercept a local model server. Pass ``trust_env=False`` to ignore the environment entirely.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from src import settings
from src.errors import (
    AuthenticationError,
    ConfigError,
    ProviderError,
    RemoteModelNotFoundError,
    ServerTimeoutError,
    ServerUnreachableError,
)
from src.settings import get_settings
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatMessage,
    GenerationParams,
    GenerationStats,
    StopStringFilter,
    TextStream,
)
from src.utils.http_client import SocketInterrupter, direct_mounts_for

logger = logging.getLogger(__name__)

# How much of a server's error message is shown: enough to be useful, short enough for a one-line banner.
MAX_SERVER_MESSAGE_CHARS = 300
# Error bodies are read only this far: a misconfigured URL can point at a large HTML page or a file download.
_MAX_ERROR_BODY_BYTES = 64 * 1024
# OpenAI rejects requests with more than 4 stop sequences; the rest are still applied on the client side.
_MAX_SERVER_STOP_STRINGS = 4


# --- base URL ----------------------------------------------------------------------------------------------------


def normalise_base_url(base_url: str) -> str:
    """Return the API base URL that endpoint paths (``/chat/completions``, ``/models``) are appended to.

    Rules: surrounding whitespace and trailing ``/`` are stripped; a URL with no path at all
    (``http://localhost:11434``) gets ``/v1`` appended, because Ollama, LM Studio, vLLM and OpenAI all serve the
    OpenAI API there; any other path is used as given (``http://host:8000/custom``). A query string is kept and
    stays at the end of every endpoint URL. Raises ``ConfigError`` if the URL is not an http(s) URL with a host.
    """
    return str(_parse_base_url(base_url))


def _parse_base_url(base_url: str) -> httpx.URL:
    raw = (base_url or "").strip()
    hint = "Expected something like http://localhost:11434/v1 or https://api.openai.com/v1."
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"Invalid server URL {raw!r}: {exc}. {hint}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"Invalid server URL {raw!r}: it must start with http:// or https:// and name a host. {hint}")
    path = url.path.rstrip("/")
    return url.copy_with(path=path or "/v1", fragment=None)


# --- server-sent events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    event: str  # the "event:" field; "message" when absent
    data: str  # the "data:" lines joined with "\n"


def iter_sse_events(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Parse server-sent events from decoded lines (without line terminators), following the WHATWG rules.

    ``data:`` lines of one event are joined with newlines, lines starting with ``:`` are comments (keep-alives),
    a blank line dispatches the event, unknown fields are ignored. An event still pending when the stream ends is
    dispatched too: the spec would drop it, but some servers omit the blank line after their last event.
    """
    data: list[str] = []
    event = ""
    first = True
    for line in lines:
        if first:
            line = line.removeprefix("\ufeff")  # the spec allows one leading byte-order mark
            first = False
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        # "id" and "retry" only matter for reconnecting EventSource clients; a chat reply is never resumed.
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


# --- helpers -----------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = MAX_SERVER_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _error_from_payload(payload: Any) -> tuple[str, str | None]:
    """(message, code) from the error bodies servers actually send.

    OpenAI, Ollama, LM Studio: ``{"error": {"message", "type", "code"}}``; vLLM: ``{"message", "code", ...}`` at
    the top level; Ollama's native API and some proxies: ``{"error": "text"}``; FastAPI: ``{"detail": ...}``.
    """
    if isinstance(payload, str):
        return payload, None
    if not isinstance(payload, dict):
        return (json.dumps(payload) if payload is not None else ""), None
    err = payload.get("error")
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or json.dumps(err)
        code = err.get("code") or err.get("type")
        return str(message), (str(code) if code is not None else None)
    if isinstance(err, str) and err:
        return err, None
    for key in ("message", "detail"):
        value = payload.get(key)
        if value:
            code = payload.get("code")
            text = value if isinstance(value, str) else json.dumps(value)
            return text, (str(code) if code is not None else None)
    return json.dumps(payload), None


@dataclass
class _Progress:
    """How one reply is going (its text is the TextStream's own); its stats end the stream however it ends."""

    started_at: float
    content_chunks: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def on_content(self) -> None:
        now = time.monotonic()
        self.content_chunks += 1
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now

    def on_usage(self, usage: Any) -> None:
        # OpenAI sends "usage": null on every chunk but the last; vLLM may send running totals: the last one wins.
        if not isinstance(usage, dict):
            return
        if isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            self.completion_tokens = usage["completion_tokens"]

    def on_finish_reason(self, reason: Any) -> None:
        if reason:
            self.finish_reason = FINISH_LENGTH if reason == "length" else FINISH_STOP

    def stats(self) -> GenerationStats:
        end = time.monotonic()
        # Without usage from the server, each content chunk counts as one token: servers send one per token.
        completion = self.completion_tokens if self.completion_tokens is not None else self.content_chunks
        ttft = self.first_token_at - self.started_at if self.first_token_at is not None else None
        speed = None
        if self.first_token_at is not None and self.last_token_at is not None and completion > 1:
            decode_s = self.last_token_at - self.first_token_at
            if decode_s > 0:
                speed = (completion - 1) / decode_s
        return GenerationStats(
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=completion,
            time_to_first_token_s=ttft,
            tokens_per_s=speed,
            total_s=end - self.started_at,
        )


# --- provider ----------------------------------------------------------------------------------------------------


class OpenAICompatibleProvider:
    """A ``ChatModel`` talking to an OpenAI-compatible server. See the module docstring for errors and cancel.

    ``base_url`` is normalised by ``normalise_base_url`` (``http://localhost:11434`` -> ``.../v1``).
    ``api_key`` is sent as ``Authorization: Bearer <key>`` only when given, and never logged or shown.
    ``read_timeout`` (default: settings' ``remote_read_timeout_s``) bounds each wait for data, including the wait
    for the first token while a local server processes the prompt. ``trust_env`` is passed to httpx (proxies and
    CA bundle from the environment); loopback servers are reached directly regardless.
    One ``httpx.Client`` (thread-safe) serves all calls; ``close()`` releases it.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = settings.REMOTE_CONNECT_TIMEOUT_S,
        read_timeout: float | None = None,
        trust_env: bool = True,
    ) -> None:
        self._base = _parse_base_url(base_url)
        # Shown in messages and logs: without any user:password@ part the URL may carry.
        self._display_url = str(self._base.copy_with(userinfo=b""))
        self._model = (model or "").strip()
        # A key pasted with a trailing newline would make an invalid header; an empty key means "no key".
        self._api_key = (api_key or "").strip() or None
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout if read_timeout is not None else get_settings().remote_read_timeout_s)
        headers = {"Accept": "text/event-stream, application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        mounts = direct_mounts_for(self._base, trust_env)
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(
                connect=self._connect_timeout,
                read=self._read_timeout,
                # Requests are small: a server that cannot take one within the connect budget is not working.
                write=self._connect_timeout,
                pool=self._connect_timeout,
            ),
            # No keep-alive: every request opens its own connection, so cancel can always find the socket.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=trust_env,
            mounts=mounts,
            follow_redirects=False,  # a redirect would silently turn POST into GET; report it instead
        )

    # --- ChatModel -----------------------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        """The normalised base URL (see ``normalise_base_url``)."""
        return str(self._base)

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream:
        """Start a streamed reply. Nothing is sent until the first ``next()``; errors are raised from there."""
        out = TextStream()
        started = threading.Event()
        disconnector = SocketInterrupter()
        model = self._model

        def settle_if_never_started() -> None:
            # TextStream.close() on a stream nobody iterated: the generator body never runs, so its finally
            # block cannot set the result. A generator that starts later sees the cancel and sets the same.
            if not started.is_set() and out.result is None:
                out.finish(model, FINISH_CANCELLED)

        out.on_cancel(disconnector.fire)
        out.on_cancel(settle_if_never_started)
        return out.start(self._produce(out, list(messages), params, disconnector, started))

    # --- other calls ---------------------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Model ids from ``GET {base}/models``, sorted case-insensitively. Raises the typed errors."""
        url = self._endpoint("models")
        logger.debug("GET %s", self._display(url))
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._raise_for_status(response, about_model=False)
        try:
            payload = response.json()
        except ValueError as exc:
            raise ProviderError(
                f"The server at {self._display_url} answered /models with something that is not JSON: "
                f"{_one_line(response.text)!r}. Is this an OpenAI-compatible API?"
            ) from exc
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ProviderError(
                f"The server at {self._display_url} answered /models without a model list: "
                f"{_one_line(json.dumps(payload))}"
            )
        ids = {item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)}
        return sorted(ids, key=lambda name: (name.lower(), name))

    def check_connection(self) -> str:
        """For a "test connection" button: a one-line summary, or a typed error saying what is wrong.

        Lists the server's models (which also checks the key) and, if a model is configured, that it is among
        them (Ollama's implicit ``:latest`` tag counts).
        """
        started = time.monotonic()
        models = self.list_models()
        elapsed_ms = (time.monotonic() - started) * 1000
        where = f"Connected to {self._display_url} ({elapsed_ms:.0f} ms)"
        if not self._model:
            return f"{where}: {len(models)} model(s) available."
        if not models:
            return f"{where}, but the server lists no models, so {self._model!r} could not be checked."
        if not self._has_model(models):
            shown = ", ".join(models[:10]) + (f" and {len(models) - 10} more" if len(models) > 10 else "")
            raise RemoteModelNotFoundError(self._display_url, self._model, f"available: {shown}")
        return f"{where}: model {self._model!r} is available ({len(models)} model(s) in total)."

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAICompatibleProvider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatibleProvider({self._display_url!r}, model={self._model!r})"

    # --- internals -----------------------------------------------------------------------------------------------

    def _endpoint(self, name: str) -> str:
        return str(self._base.copy_with(path=f"{self._base.path}/{name}"))

    def _display(self, url: str) -> str:
        return str(httpx.URL(url).copy_with(userinfo=b""))

    def _redact(self, text: str) -> str:
        # A careless server may echo the key in its error message; it must not reach the screen or a log.
        return text.replace(self._api_key, "***") if self._api_key else text

    def _has_model(self, models: Sequence[str]) -> bool:
        wanted = self._model
        return (
            wanted in models
            or f"{wanted}:latest" in models
            or (wanted.endswith(":latest") and wanted.removesuffix(":latest") in models)
        )

    def _chat_body(self, messages: Sequence[ChatMessage], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [m.as_dict() for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        # top_k and repetition_penalty are deliberately not sent: they are not part of the OpenAI API, and
        # OpenAI rejects unknown fields with HTTP 400. They only apply to the local engine.
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop[:_MAX_SERVER_STOP_STRINGS])
        return body

    def _produce(
        self,
        out: TextStream,
        messages: list[ChatMessage],
        params: GenerationParams,
        disconnector: SocketInterrupter,
        started: threading.Event,
    ) -> Iterator[str]:
        started.set()
        progress = _Progress(started_at=time.monotonic())
        finish = FINISH_ERROR
        response: httpx.Response | None = None
        try:
            if out.cancelled.is_set():
                finish = FINISH_CANCELLED
                return
            if not self._model:
                raise ConfigError("No model name is set for this server. Choose a model in the LLM settings.")
            url = self._endpoint("chat/completions")
            logger.debug("POST %s (model %s, %d messages)", self._display(url), self._model, len(messages))
            request = self._client.build_request(
                "POST",
                url,
                json=self._chat_body(messages, params),
                # A compressing server or proxy buffers the event stream to fill its blocks: tokens would arrive late.
                headers={"Accept-Encoding": "identity"},
                extensions={"trace": disconnector.trace},
            )
            response = self._client.send(request, stream=True)
            # Also covers a connection httpcore reused without connecting (the trace then saw nothing).
            disconnector.attach_stream(response.extensions.get("network_stream"))
            self._raise_for_status(response, about_model=True)
            stop_filter = StopStringFilter(params.stop)
            for content in self._contents(response, progress):
                shown = stop_filter.feed(content)
                if shown:
                    yield shown
                if out.cancelled.is_set():
                    finish = FINISH_CANCELLED
                    return
                if stop_filter.stopped:
                    # Closing the response (finally) tells the server to stop generating what nobody will see.
                    finish = FINISH_STOP
                    return
            if out.cancelled.is_set() and progress.finish_reason is None:
                finish = FINISH_CANCELLED  # the shutdown socket ended the body early; this is not a complete reply
                return
            tail = stop_filter.flush()
            if tail:
                yield tail
            finish = progress.finish_reason or FINISH_STOP
        except GeneratorExit:  # TextStream.close() while suspended at a yield
            finish = FINISH_CANCELLED
            raise
        except (httpx.HTTPError, OSError, ProviderError) as exc:
            if out.cancelled.is_set():
                # The socket was shut down under the request on purpose; whatever broke is the cancel's doing.
                finish = FINISH_CANCELLED
                return
            if isinstance(exc, ProviderError):
                raise
            raise self._transport_error(exc) from exc
        finally:
            disconnector.detach()
            if response is not None:
                response.close()  # closes the connection mid-body: the server sees the client go away
            out.finish(self._model, finish, progress.stats())
            logger.debug("reply from %s ended: %s", self._display_url, finish)

    def _contents(self, response: httpx.Response, progress: _Progress) -> Iterator[str]:
        """Yield the content pieces of a streamed reply, recording finish reason and usage in ``progress``."""
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            yield from self._contents_of_completion(response, progress)
            return
        if content_type.startswith("text/html"):
            raise ProviderError(
                f"The server at {self._display_url} answered with a web page instead of an event stream. "
                "Check the URL: OpenAI-compatible APIs usually end in /v1."
            )
        response.encoding = "utf-8"  # the SSE spec mandates UTF-8 whatever the header says
        saw_event = False
        for event in iter_sse_events(response.iter_lines()):
            if event.data.strip() == "[DONE]":
                return
            saw_event = True
            payload = self._decode_event(event)
            progress.on_usage(payload.get("usage"))
            choices = payload.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue  # the usage-only chunk has "choices": []
            choice = choices[0]
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                progress.on_content()
                yield content
            progress.on_finish_reason(choice.get("finish_reason"))
        if not saw_event:
            raise ProviderError(
                f"The server at {self._display_url} ended the reply without sending any event. "
                "Is this an OpenAI-compatible API?"
            )
        # Ended without [DONE]: some servers just close the stream after the last chunk; that is a normal end.

    def _contents_of_completion(self, response: httpx.Response, progress: _Progress) -> Iterator[str]:
        # A server that ignores "stream": true answers with one chat.completion object; accept it as one piece.
        try:
            payload = json.loads(response.read())
        except ValueError as exc:
            raise ProviderError(f"The server at {self._display_url} sent a reply that is not valid JSON.") from exc
        if isinstance(payload, dict) and payload.get("error"):
            message, _ = _error_from_payload(payload)
            raise ProviderError(f"The server at {self._display_url} reported an error: {self._short(message)}")
        try:
            choice = payload["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(
                f"The server at {self._display_url} sent a reply without choices: {_one_line(json.dumps(payload))}"
            ) from exc
        progress.on_usage(payload.get("usage"))
        if content:
            progress.on_content()
            yield content
        progress.on_finish_reason(choice.get("finish_reason"))

    def _decode_event(self, event: SSEEvent) -> dict[str, Any]:
        if event.event == "error":
            message, _ = _error_from_payload(_loads_or_text(event.data))
            raise self._mid_reply_error(message)
        try:
            payload = json.loads(event.data)
        except ValueError as exc:
            raise ProviderError(
                f"The server at {self._display_url} sent a malformed event (not JSON): {self._short(event.data)!r}"
            ) from exc
        if not isinstance(payload, dict):
            raise ProviderError(
                f"The server at {self._display_url} sent a malformed event (not an object): "
                f"{self._short(event.data)!r}"
            )
        if payload.get("error"):
            message, _ = _error_from_payload(payload)
            raise self._mid_reply_error(message)
        return payload

    def _mid_reply_error(self, message: str) -> ProviderError:
        return ProviderError(f"The server at {self._display_url} reported an error mid-reply: {self._short(message)}")

    def _short(self, text: str) -> str:
        return _one_line(self._redact(text))

    def _raise_for_status(self, response: httpx.Response, *, about_model: bool) -> None:
        """Turn a non-2xx answer into the typed error, with the server's own message (never a traceback)."""
        if response.is_success:
            return
        status = response.status_code
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= _MAX_ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass  # the status alone still says what happened
        finally:
            response.close()
        text = body.decode("utf-8", errors="replace")
        content_type = response.headers.get("content-type", "")
        code: str | None = None
        payload = _loads_or_text(text)
        if isinstance(payload, (dict, list)):
            message, code = _error_from_payload(payload)
        elif "html" in content_type:
            message = re.sub(r"<[^>]+>", " ", text)  # a proxy's or web server's error page: keep the words
        else:
            message = text
        message = self._short(message)
        logger.debug("%s answered HTTP %d: %s", self._display_url, status, message)
        if status in (401, 403):
            raise AuthenticationError(self._display_url, message)
        if about_model and (code == "model_not_found" or (status == 404 and "model" in message.lower())):
            raise RemoteModelNotFoundError(self._display_url, self._model, message)
        hint = ""
        if status == 404:
            hint = " Check the URL: OpenAI-compatible APIs usually end in /v1."
        elif 300 <= status < 400:
            location = response.headers.get("location")
            hint = f" It redirects to {location}; use that URL instead." if location else ""
        elif status == 429:
            hint = " The server is rate-limiting requests or the account is out of quota."
        reason = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise ProviderError(
            f"The server at {self._display_url} answered HTTP {status}{reason}: {message or 'no details'}.{hint}"
        )

    def _transport_error(self, exc: Exception) -> ProviderError:
        detail = _one_line(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.ConnectTimeout):
            return ServerUnreachableError(self._display_url, f"no connection within {self._connect_timeout:g} s")
        if isinstance(exc, (httpx.ConnectError, httpx.ProxyError)):
            return ServerUnreachableError(self._display_url, detail)
        if isinstance(exc, httpx.ReadTimeout):
            return ServerTimeoutError(self._display_url, self._read_timeout)
        if isinstance(exc, (httpx.WriteTimeout, httpx.PoolTimeout)):
            return ServerTimeoutError(self._display_url, self._connect_timeout)
        return ProviderError(f"The connection to {self._display_url} failed: {detail}")


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
