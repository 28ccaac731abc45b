"""LocalLLMEngine: chat with a local transformers model, streamed, cancellable, within its context window.

One model is loaded at a time and reloaded only when another is asked for. ``stream()`` runs ``model.generate`` in a
worker thread and hands text pieces to the caller as they are decoded; ``cancel()`` on the stream stops the worker
after the token being computed (a ``StoppingCriteria`` watches the stream's cancel event), not just the display.
"""

from __future__ import annotations

import copy
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.errors import ContextOverflowError, ModelLoadError
from src.settings import DEFAULT_LOCAL_MODEL, get_settings
from src.utils.catalog import resolve_local_model
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatMessage,
    GenerationParams,
    GenerationResult,
    GenerationStats,
    StopStringFilter,
    TextStream,
    as_chat_messages,
)

logger = logging.getLogger(__name__)

# Used when a model ships without a chat template (base models): plain and unambiguous.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def pick_device(preferred: str | None = None) -> str:
    """CUDA > MPS > CPU, unless the user chose (HEARTH_DEVICE)."""
    import torch

    if preferred:
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_computes_bf16_natively() -> bool:
    """bf16 halves memory traffic, but is only faster than fp32 where the CPU has bf16 instructions.

    Measured on this project's 2-core AMD EPYC (avx512_bf16): SmolLM2-135M decodes at ~24 tokens/s in bf16 vs ~17
    in fp32. Without those instructions bf16 is emulated and slower, so fp32 is the right default there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def pick_dtype(device: str, preferred: str | None = None) -> Any:
    import torch

    if preferred:
        try:
            return getattr(torch, preferred)
        except AttributeError as exc:
            raise ModelLoadError(f"Unknown dtype {preferred!r} (HEARTH_DTYPE); use bfloat16, float16 or float32.") from exc
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_computes_bf16_natively() else torch.float32


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    folder: Path
    device: str
    dtype: str
    context_window: int
    load_time_s: float


@dataclass(frozen=True)
class PreparedPrompt:
    input_ids: Any  # torch.LongTensor of shape (1, n)
    dropped_messages: int
    max_new_tokens: int
    max_new_tokens_clamped: bool


class LocalLLMEngine:
    """Streams chat replies from a local transformers model. Thread-safe; one generation runs at a time."""

    _shared: "LocalLLMEngine | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, model: str | None = None, *, context_window: int | None = None) -> None:
        self._model_ref = model or DEFAULT_LOCAL_MODEL
        self._context_window_override = context_window
        self._lock = threading.RLock()  # held while loading and while generating
        self._model: Any = None
        self._tokenizer: Any = None
        self._loaded: LoadedModel | None = None
        # One long-lived worker thread: torch's intra-op thread pool belongs to the calling thread, and building a
        # new one for every reply costs tens of milliseconds of time to first token on a small CPU.
        self._worker = _GenerationWorker()
        self._generating = threading.Event()

    @classmethod
    def shared(cls) -> "LocalLLMEngine":
        """The process-wide engine, so chat, workflows and the server never load the same model twice."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    # --- loading --------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    @property
    def is_generating(self) -> bool:
        return self._generating.is_set()

    def load_model(self, model: str | None = None) -> LoadedModel:
        """Load ``model`` (catalog id, folder name or path); a no-op when it is already the loaded one."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        model_ref = model or self._model_ref
        model_id, folder = resolve_local_model(model_ref)
        with self._lock:
            if self._loaded is not None and self._loaded.folder == folder.resolve():
                self._model_ref = model_ref
                return self._loaded
            self.unload_model()
            settings = get_settings()
            device = pick_device(settings.device)
            dtype = pick_dtype(device, settings.dtype)
            hf_logging.disable_progress_bar()
            started = time.perf_counter()
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder)
                loaded_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"Cannot load the model in {folder}: {exc}") from exc
            if tokenizer.chat_template is None:
                tokenizer.chat_template = _FALLBACK_TEMPLATE
            self._model, self._tokenizer = loaded_model, tokenizer
            self._model_ref = model_ref
            self._loaded = LoadedModel(
                model_id=model_id,
                folder=folder.resolve(),
                device=device,
                dtype=str(dtype).removeprefix("torch."),
                context_window=self._context_window_of(loaded_model, tokenizer),
                load_time_s=time.perf_counter() - started,
            )
            torch.set_grad_enabled(False)
            logger.info(
                "Loaded %s on %s (%s) in %.1f s", model_id, device, self._loaded.dtype, self._loaded.load_time_s
            )
            return self._loaded

    def unload_model(self) -> None:
        """Drop the model and free its memory (and the GPU cache)."""
        with self._lock:
            if self._model is None:
                return
            device = self._loaded.device if self._loaded else "cpu"
            self._model = self._tokenizer = self._loaded = None
            gc.collect()
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()

    def _context_window_of(self, model: Any, tokenizer: Any) -> int:
        if self._context_window_override:
            return self._context_window_override
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        tokenizer_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < window:
            window = tokenizer_max
        return int(window)

    # --- prompts --------------------------------------------------------------------------------------------------

    def prepare_prompt(self, messages: Sequence[ChatMessage], max_new_tokens: int) -> PreparedPrompt:
        """Apply the chat template, leaving out the oldest turns (never the system prompt, never the last message)
        until prompt + reply fit the context window. Never sends more tokens than the model accepts."""
        loaded = self._loaded or self.load_model()
        tokenizer = self._tokenizer
        window = loaded.context_window
        kept = list(messages)
        dropped = 0
        input_ids = self._encode(tokenizer, kept)
        while input_ids.shape[1] + max_new_tokens > window:
            droppable = [i for i, m in enumerate(kept[:-1]) if m.role != "system"]
            if not droppable:
                break
            del kept[droppable[0]]
            dropped += 1
            # A conversation should not open with a reply whose question is gone.
            first = next((i for i, m in enumerate(kept[:-1]) if m.role != "system"), None)
            if first is not None and kept[first].role == "assistant":
                del kept[first]
                dropped += 1
            input_ids = self._encode(tokenizer, kept)
        prompt_tokens = int(input_ids.shape[1])
        if prompt_tokens >= window:
            raise ContextOverflowError(needed=prompt_tokens + 1, limit=window)
        allowed = min(max_new_tokens, window - prompt_tokens)
        if dropped:
            logger.info("Left out %d old message(s) to fit the %d-token context window", dropped, window)
        return PreparedPrompt(input_ids, dropped, allowed, allowed < max_new_tokens)

    @staticmethod
    def _encode(tokenizer: Any, messages: Sequence[ChatMessage]) -> Any:
        text = tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], add_generation_prompt=True, tokenize=False
        )
        # The template already wrote the special tokens (BOS etc.); adding them again would double them.
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    # --- generation -----------------------------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[ChatMessage | dict[str, str]],
        params: GenerationParams | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> TextStream:
        """Start generating and return a ``TextStream`` of text pieces.

        ``model`` switches the loaded model first (loading and generating share one lock, so a concurrent caller
        cannot swap the model between the two). Raises at once for bad input (``InvalidParameterError``,
        ``ContextOverflowError``) and for a model that cannot be loaded; later failures raise from the iteration.
        """
        params = (params or GenerationParams()).updated(**overrides)
        chat = as_chat_messages(messages)
        with self._lock:
            loaded = self.load_model(model) if model or self._loaded is None else self._loaded
            model, tokenizer = self._model, self._tokenizer
            prompt = self.prepare_prompt(chat, params.max_new_tokens)
        text_stream = TextStream()
        return text_stream.start(self._produce(text_stream, model, tokenizer, loaded, prompt, params))

    def complete(
        self, messages: Sequence[ChatMessage | dict[str, str]], params: GenerationParams | None = None, **overrides: Any
    ) -> GenerationResult:
        """Generate a whole reply; the result carries stats and context metadata."""
        return self.stream(messages, params, **overrides).collect()

    def generate(
        self, messages: Sequence[ChatMessage | dict[str, str]], params: GenerationParams | None = None, **overrides: Any
    ) -> str:
        return self.complete(messages, params, **overrides).text

    def _produce(
        self,
        text_stream: TextStream,
        model: Any,
        tokenizer: Any,
        loaded: LoadedModel,
        prompt: PreparedPrompt,
        params: GenerationParams,
    ) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        pieces: queue.Queue[object] = queue.Queue()
        streamer = _IncrementalDecoder(tokenizer, pieces)
        stop_filter = StopStringFilter(params.stop)
        stop_requested = threading.Event()
        cancelled = text_stream.cancelled

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancelled.is_set() or stop_requested.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        generation_config = self._generation_config(model, tokenizer, params, prompt.max_new_tokens)
        input_ids = prompt.input_ids.to(loaded.device)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self._generating.set()
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=generation_config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
                    )
            except BaseException as exc:  # reported to the consumer, re-raised in its thread
                failure.append(exc)
            finally:
                self._generating.clear()
                pieces.put(_END)

        started = time.perf_counter()
        parts: list[str] = []
        finish_reason = FINISH_ERROR
        worker = self._worker.submit(run)
        try:
            while True:
                item = pieces.get()
                if item is _END or cancelled.is_set():
                    break
                shown = stop_filter.feed(str(item))
                if stop_filter.stopped:
                    stop_requested.set()
                if shown:
                    parts.append(shown)
                    yield shown
            worker.wait()
            if failure:
                raise failure[0]
            tail = stop_filter.flush()
            if tail and not cancelled.is_set():
                parts.append(tail)
                yield tail
            if cancelled.is_set():
                finish_reason = FINISH_CANCELLED
            elif stop_filter.stopped or streamer.completion_tokens < prompt.max_new_tokens or streamer.ended_on_eos:
                finish_reason = FINISH_STOP
            else:
                finish_reason = FINISH_LENGTH
        except GeneratorExit:
            finish_reason = FINISH_CANCELLED
            raise
        finally:
            # Closing or abandoning the stream must stop the worker too, not leave it generating in the background.
            if not worker.is_set():
                text_stream.cancel()
                worker.wait()
                if finish_reason == FINISH_ERROR and cancelled.is_set():
                    finish_reason = FINISH_CANCELLED
            text_stream.result = GenerationResult(
                text="".join(parts),
                model=loaded.model_id,
                finish_reason=finish_reason,
                stats=streamer.stats(prompt_tokens=int(prompt.input_ids.shape[1]), started=started),
                dropped_messages=prompt.dropped_messages,
                max_new_tokens_clamped_to=prompt.max_new_tokens if prompt.max_new_tokens_clamped else None,
            )

    @staticmethod
    def _generation_config(model: Any, tokenizer: Any, params: GenerationParams, max_new_tokens: int) -> Any:
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.repetition_penalty = params.repetition_penalty
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id
        if params.temperature > 0:
            config.do_sample = True
            config.temperature = params.temperature
            config.top_p = params.top_p
            config.top_k = params.top_k or None
        else:
            # Greedy: clear the model's own sampling defaults so transformers doesn't warn they are ignored.
            config.do_sample = False
            config.temperature = config.top_p = config.top_k = None
        return config


_END = object()


class _GenerationWorker:
    """A single daemon thread that runs generation jobs in turn (a daemon, so a reply that is still running never
    keeps the process from exiting)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Queue ``job``; the returned event is set once it has finished."""
        done = threading.Event()
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hearth-generate", daemon=True)
                self._thread.start()
        self._jobs.put((job, done))
        return done

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()


class _IncrementalDecoder:
    """A transformers streamer that turns token ids into text pieces as they come.

    It decodes a sliding window of ids (the approach of text-generation-inference) so that each step costs O(1)
    rather than re-decoding the whole reply, and holds back text that ends in an incomplete UTF-8 sequence, so a
    Chinese character split over two tokens is never shown as '\ufffd'.
    """

    def __init__(self, tokenizer: Any, out: "queue.Queue[object]") -> None:
        self._tokenizer = tokenizer
        self._out = out
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prompt_seen = False
        self._eos_ids = set(_as_list(tokenizer.eos_token_id))
        self.ended_on_eos = False
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands the streamer the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        new_ids = [int(i) for i in value.reshape(-1).tolist()]
        self.completion_tokens += len(new_ids)
        self.ended_on_eos = bool(new_ids) and new_ids[-1] in self._eos_ids
        self._ids.extend(new_ids)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._out.put(full[len(prefix) :])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)

    def end(self) -> None:
        # A reply cut by max_new_tokens can end inside a multi-byte character: drop that half character.
        tail = self._tokenizer.decode(self._ids[self._prefix_offset :], skip_special_tokens=True).rstrip("\ufffd")
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        if len(tail) > len(prefix):
            self._out.put(tail[len(prefix) :])

    def stats(self, prompt_tokens: int, started: float) -> GenerationStats:
        ttft = (self.first_token_at - started) if self.first_token_at is not None else None
        speed = None
        if self.first_token_at is not None and self.last_token_at is not None and self.completion_tokens > 1:
            elapsed = self.last_token_at - self.first_token_at
            speed = (self.completion_tokens - 1) / elapsed if elapsed > 0 else None
        return GenerationStats(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token_s=ttft,
            tokens_per_s=speed,
            total_s=time.perf_counter() - started,
        )


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
