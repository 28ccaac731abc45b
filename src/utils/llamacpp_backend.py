"""The llama.cpp backend of ``LocalLLMEngine``: GGUF files run by llama.cpp's own server code (``xllamacpp``).

xllamacpp embeds llama.cpp's C++ server in the process. We drive it the plainest way that keeps the engine's behaviour
identical to the transformers backend:

* the prompt is built by llama.cpp itself (``/apply-template``: the chat template stored in the GGUF) and tokenized by
  it (``/tokenize``), so the engine can count tokens and leave out old turns exactly as it does with transformers;
* the reply is generated from those token ids with ``handle_completions(stream=True)``: a callback per token, in the
  calling thread (the engine's generation worker); returning True from it makes llama.cpp stop at once, which is how
  cancel and stop strings stop the computation within one token;
* sampling uses the same knobs in the same order as transformers (repetition penalty over the whole context, then
  temperature, top-k, top-p; llama.cpp's extra samplers such as min-p are turned off), greedy when temperature is 0.

Those two helper endpoints go over llama.cpp's HTTP listener, which binds 127.0.0.1 on a random port; it is protected
with a random API key that never leaves this process.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from src.errors import GenerationError, ModelLoadError
from src.settings import BACKEND_LLAMACPP
from src.utils.cpu import compute_threads
from src.utils.generation import ChatMessage, GenerationParams

logger = logging.getLogger(__name__)

# llama.cpp allocates the whole KV cache up front (transformers grows it): cap the window so that a model trained
# for 32k tokens does not take hundreds of MB before the first word. Chats in this app stay far below this.
MAX_CONTEXT_WINDOW = 8192
DEFAULT_CONTEXT_WINDOW = 4096  # when the GGUF does not say
SLOT_RELEASE_TIMEOUT_S = 10.0  # llama.cpp stops a cancelled reply within a token; this only bounds a bug's wait

# transformers' order: repetition penalty on the raw logits, then temperature, top-k, top-p (then sampling).
_SAMPLERS = ["penalties", "temperature", "top_k", "top_p"]


class TokenSink(Protocol):
    def tokens(self, count: int, text: str) -> None: ...

    def finished(self, *, eos: bool) -> None: ...


def llamacpp_available() -> bool:
    """True when the xllamacpp wheel is installed and imports on this machine."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import xllamacpp  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel built for another CPU/OS
            logger.info("llama.cpp backend unavailable: %s", exc)
            _AVAILABLE = False
        else:
            _AVAILABLE = True
    return _AVAILABLE


_AVAILABLE: bool | None = None


def context_window_from(meta: dict[str, Any]) -> int:
    """The window this backend gives a model whose GGUF metadata (read with ``context_length=True``) is ``meta``:
    its trained context, at most ``MAX_CONTEXT_WINDOW``."""
    return min(int(meta.get("context_length") or DEFAULT_CONTEXT_WINDOW), MAX_CONTEXT_WINDOW)


class LlamaCppBackend:
    """One GGUF model loaded in llama.cpp (one slot: the engine runs one generation at a time)."""

    name = BACKEND_LLAMACPP
    device = "cpu"

    def __init__(self, gguf: Path, *, context_window: int | None = None, n_threads: int | None = None) -> None:
        import xllamacpp

        meta = read_gguf_metadata(gguf, ("general.architecture", "general.file_type"), context_length=True)
        self.context_window = int(context_window or context_window_from(meta))
        self.dtype = _FILE_TYPES.get(meta.get("general.file_type"), "gguf")  # type: ignore[arg-type]
        self.n_threads = n_threads or compute_threads()
        self._api_key = secrets.token_urlsafe(24)
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = self.context_window
        params.n_parallel = 1
        params.cpuparams.n_threads = self.n_threads
        params.cpuparams_batch.n_threads = self.n_threads
        params.api_keys = [self._api_key]
        params.ui = False
        params.endpoint_metrics = True  # counters() below; the listener needs the API key anyway
        params.endpoint_slots = False
        params.ctx_shift = False  # never silently drop the start of a conversation: the engine trims whole turns
        params.verbosity = -1 if not logger.isEnabledFor(logging.DEBUG) else 3
        try:
            self._server: Any = xllamacpp.Server(params)
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp cannot load {gguf}: {exc}") from exc
        # The server's task loop starts in its own thread a moment after the constructor returns, and it marks
        # itself running when it starts: a server destroyed before that (a load followed at once by an unload)
        # had its stop request overwritten and its destructor waited for the loop forever, holding the GIL. A
        # task through the queue returns only once the loop runs, so from here on the stop request sticks.
        self._server.handle_metrics()
        address = urlparse(self._server.listening_address)
        self._host, self._port = address.hostname or "127.0.0.1", int(address.port or 0)
        self._http: http.client.HTTPConnection | None = None
        self._http_lock = threading.Lock()
        self.gguf = gguf

    # --- prompts --------------------------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The GGUF's chat template applied (with the generation prompt), as token ids."""
        prompt = self._post("/apply-template", {"messages": [m.as_dict() for m in messages]})["prompt"]
        ids = [int(i) for i in self._post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]]
        # Like llama.cpp's own chat endpoint: BOS is added when the model wants one; a template that writes it too
        # would double it.
        if len(ids) >= 2 and ids[0] == ids[1] and self._bos_text and prompt.startswith(self._bos_text):
            del ids[0]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._post("/detokenize", {"tokens": [int(i) for i in ids]})["content"])

    @property
    def _bos_text(self) -> str:
        if not hasattr(self, "_bos_cache"):
            try:
                self._bos_cache = str(self._get("/props").get("bos_token") or "")
            except GenerationError:
                self._bos_cache = ""
        return self._bos_cache

    # --- generation -----------------------------------------------------------------------------------------------

    def request_body(self, token_ids: Sequence[int], params: GenerationParams, max_new_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": list(token_ids),
            "stream": True,
            "max_tokens": max_new_tokens,
            "temperature": float(params.temperature),
            "top_k": int(params.top_k),
            "top_p": float(params.top_p),
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": float(params.repetition_penalty),
            "repeat_last_n": self.context_window,  # the whole context, as transformers does
            "samplers": _SAMPLERS,
            "cache_prompt": True,  # a follow-up turn reuses the KV cache of the shared prefix
            "timings_per_token": True,  # each chunk says how many tokens are done (a chunk can hold none or two)
        }
        if params.seed is not None:
            body["seed"] = int(params.seed) & 0xFFFFFFFF
        return body

    def generate(
        self,
        token_ids: Sequence[int],
        params: GenerationParams,
        max_new_tokens: int,
        sink: TokenSink,
        should_stop: Callable[[], bool],
    ) -> None:
        """Generate in the calling thread, handing text to ``sink``; stops after the token during which
        ``should_stop()`` became true."""
        errors: list[str] = []
        done = 0

        def on_chunk(chunk: Any) -> bool:
            nonlocal done
            try:
                if not isinstance(chunk, dict):
                    return should_stop()
                if "error" in chunk:
                    error = chunk["error"]
                    errors.append(str(error.get("message") if isinstance(error, dict) else error))
                    return True
                choices = chunk.get("choices") or [{}]
                text = choices[0].get("text") or ""
                total = int((chunk.get("timings") or {}).get("predicted_n") or done)
                if total > done or text:
                    sink.tokens(max(total - done, 0), text)
                    done = max(total, done)
                finish = choices[0].get("finish_reason")
                if finish:
                    sink.finished(eos=finish == "stop")
                return should_stop()
            except Exception as exc:  # noqa: BLE001 - never let an exception cross into the C++ server
                errors.append(f"{type(exc).__name__}: {exc}")
                return True

        try:
            self._server.handle_completions(self.request_body(token_ids, params, max_new_tokens), on_chunk)
        finally:
            try:
                self._wait_until_idle()
            except GenerationError as exc:  # never hide the generation's own error behind this one
                logger.warning("Could not ask llama.cpp whether its slot is idle: %s", exc)
        if errors:
            raise GenerationError(f"llama.cpp failed to generate: {errors[0]}")

    def _wait_until_idle(self) -> None:
        """Return once llama.cpp's slot has really stopped. ``handle_completions`` returns as soon as the callback
        asks to stop, but the stop is a task for llama.cpp's own loop, which meanwhile decodes one more token (20-60
        ms, measured); a reply is over, for the engine, only when nothing computes any more: the next reply, an
        unload and the process's exit then never race that token."""
        deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT_S
        while self.counters().get("requests_processing", 0.0) > 0:
            if time.monotonic() > deadline:
                logger.warning("llama.cpp's slot was still busy %.0f s after the reply ended", SLOT_RELEASE_TIMEOUT_S)
                return
            time.sleep(0.002)

    def counters(self) -> dict[str, float]:
        """llama.cpp's own counters (``tokens_predicted_total``, ``n_decode_total``, ``prompt_tokens_total``, ...):
        proof of what the C++ side really computed, e.g. that a cancelled reply stopped there."""
        out: dict[str, float] = {}
        for line in str(self._server.handle_metrics()).splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.removeprefix("llamacpp:").partition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
        return out

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None
        self._server = None  # its destructor stops llama.cpp's threads and frees the model

    # --- llama.cpp's helper endpoints -----------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, json.dumps(body).encode())

    def _get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def _request(self, method: str, path: str, payload: bytes | None) -> Any:
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        with self._http_lock:
            for attempt in (1, 2):  # llama.cpp closes idle keep-alive connections: reconnect once
                if self._http is None:
                    self._http = http.client.HTTPConnection(self._host, self._port, timeout=60)
                try:
                    self._http.request(method, path, body=payload, headers=headers)
                    response = self._http.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._http.close()
                    self._http = None
                    if attempt == 2:
                        raise GenerationError(f"llama.cpp's {path} did not answer: {exc}") from exc
                    continue
                if response.status != 200:
                    raise GenerationError(f"llama.cpp's {path} answered HTTP {response.status}: {data[:300]!r}")
                return json.loads(data)
        raise AssertionError("unreachable")


# general.file_type values (llama_ftype) of the common GGUF files, for display.
_FILE_TYPES = {0: "f32", 1: "f16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
               12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
               32: "bf16"}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path, keys: Sequence[str], *, context_length: bool = False) -> dict[str, Any]:
    """A few scalar metadata values from a GGUF file's header, reading only as far as needed (the ``gguf``
    package's reader maps every tensor and takes seconds). ``context_length`` adds ``{arch}.context_length``."""
    wanted = set(keys)
    found: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file.")
            (version,) = struct.unpack("<I", f.read(4))
            count_format = "<I" if version == 1 else "<Q"
            size = struct.calcsize(count_format)
            struct.unpack(count_format, f.read(size))  # tensor count
            (kv_count,) = struct.unpack(count_format, f.read(size))

            def read_string() -> str:
                (length,) = struct.unpack(count_format, f.read(size))
                return f.read(length).decode("utf-8", errors="replace")

            def read_value(kind: int) -> Any:
                if kind == _STRING:
                    return read_string()
                if kind == _ARRAY:
                    (item_kind,) = struct.unpack("<I", f.read(4))
                    (n,) = struct.unpack(count_format, f.read(size))
                    if item_kind in _SCALARS:
                        f.seek(n * struct.calcsize(_SCALARS[item_kind]), os.SEEK_CUR)
                    else:
                        for _ in range(n):
                            read_value(item_kind)
                    return None
                fmt = _SCALARS[kind]
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

            for _ in range(kv_count):
                key = read_string()
                (kind,) = struct.unpack("<I", f.read(4))
                value = read_value(kind)
                if key == "general.architecture" and context_length:
                    wanted.add(f"{value}.context_length")
                if key in wanted:
                    found["context_length" if key.endswith(".context_length") else key] = value
                    names = {"context_length" if k.endswith(".context_length") else k for k in wanted}
                    if names <= set(found) and (not context_length or "context_length" in found):
                        break
    except (OSError, struct.error, KeyError) as exc:
        raise ModelLoadError(f"Cannot read the GGUF file {path}: {exc}") from exc
    return found

