"""LocalLLMEngine: chat with a local model, streamed, cancellable, within its context window.

One model is loaded at a time and reloaded only when another is asked for. Two backends run it, behind one
behaviour (the same tests run against both): llama.cpp for GGUF files (``llamacpp_backend``, the fast path on a CPU)
and transformers for everything else. ``backends.choose_backend`` picks one per model. ``stream()`` runs the
generation in a single long-lived worker thread and hands text pieces to the caller as they are decoded;
``cancel()`` on the stream stops the worker after the token being computed (a ``StoppingCriteria`` for
transformers, the per-token callback's return value for llama.cpp), not just the display.
"""

from __future__ import annotations

import copy
import gc
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from src.errors import ContextOverflowError, EngineStoppedError, ModelLoadError
from src.settings import BACKEND_LLAMACPP, BACKEND_TRANSFORMERS, DEFAULT_LOCAL_MODEL, DTYPE_INT8, get_settings
from src.utils import shutdown
from src.utils.backends import available_backends, choose_backend, get_model_backend, set_model_backend
from src.utils.catalog import ModelFiles, locate_model, resolve_local_model
from src.utils.context_trimming import fit_to_window
from src.utils.cpu import compute_threads, use_compute_threads_in_torch
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
    """The dtype a model computes in. ``preferred`` is HEARTH_DTYPE; its value ``int8`` is about how the lean
    decoder stores weights (see ``wants_int8_weights``), the computation then uses the device's default."""
    import torch

    if preferred and preferred != DTYPE_INT8:
        try:
            return getattr(torch, preferred)
        except AttributeError as exc:
            raise ModelLoadError(
                f"Unknown dtype {preferred!r} (HEARTH_DTYPE); use int8, bfloat16, float16 or float32."
            ) from exc
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_computes_bf16_natively() else torch.float32


def wants_int8_weights(device: str, preferred: str | None) -> bool:
    """int8 weight-only is the CPU default (about twice the decode speed of bf16 for a fraction of a logit of
    difference, like llama.cpp's Q8_0; benchmarks/chat_speed.py); an explicit dtype keeps the weights as loaded."""
    if preferred == DTYPE_INT8 and device != "cpu":
        raise ModelLoadError(f"HEARTH_DTYPE=int8 runs on the CPU only, not on {device}.")
    return device == "cpu" and preferred in (None, DTYPE_INT8)


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    folder: Path
    device: str
    dtype: str  # torch dtype (transformers) or the GGUF quantization (llama.cpp), e.g. "Q4_1"
    context_window: int
    load_time_s: float
    backend: str = BACKEND_TRANSFORMERS  # "llama.cpp" or "transformers"
    weights: Path | None = None  # what was loaded: the GGUF file (llama.cpp) or the model folder


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: tuple[int, ...]
    dropped_messages: int
    max_new_tokens: int
    max_new_tokens_clamped: bool

    @property
    def prompt_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def input_ids(self) -> Any:
        """The prompt as a torch tensor of shape (1, n), for transformers."""
        import torch

        return torch.tensor([self.token_ids], dtype=torch.long)


class LocalLLMEngine:
    """Streams chat replies from a local model. Thread-safe; one generation runs at a time.

    ``backend`` forces "llama.cpp" or "transformers" for this engine (tests, benchmarks); by default each model gets
    the one ``backends.choose_backend`` picks (HEARTH_BACKEND, then the per-model setting, then auto).
    """

    _shared: LocalLLMEngine | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self, model: str | None = None, *, context_window: int | None = None, backend: str | None = None
    ) -> None:
        self._model_ref = model or DEFAULT_LOCAL_MODEL
        self._context_window_override = context_window
        self._forced_backend = backend
        self._lock = threading.RLock()  # held while loading and while generating
        self._backend: _Backend | None = None
        self._loaded: LoadedModel | None = None
        self._loaded_key: tuple[str, str] | None = None
        # One long-lived worker thread for the whole process, shared by every engine: torch's intra-op thread pool
        # belongs to the calling thread; building one per reply costs tens of milliseconds of time to first token,
        # and two pools alive at once slow every token (see load_model). Replies are serialised process-wide, which
        # on a laptop CPU is what the cores allow anyway.
        self._worker = _SHARED_WORKER
        self._generating = threading.Event()
        _engines.add(self)

    def run_on_engine_thread(self, function: Callable[[], _T]) -> _T:
        """Run other torch work in this process (a reference model in a benchmark, say) on the thread the engine
        computes on, so that the process keeps a single CPU thread pool (see ``load_model``)."""
        return self._worker.call(function)

    @classmethod
    def shared(cls) -> LocalLLMEngine:
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
        """Load ``model`` (catalog id, folder name or path, or a .gguf file); a no-op when it is already the loaded
        one on the same backend.

        The load runs on the generation worker thread, like every reply: torch's CPU thread pool (OpenMP) belongs to
        the thread that uses it, and with a second pool alive in the process (a load on the caller's thread, the
        replies on the worker) OpenMP sees more threads than cores and stops spinning between its ~120 parallel
        regions per token. Measured: the lean decoder at 35 tok/s instead of 60 (SmolLM2-135M, 2 cores). Callers
        must therefore never hold ``self._lock`` while they wait for a load."""
        return self._worker.call(lambda: self._load_on_worker(model))

    def _load_on_worker(self, model: str | None) -> LoadedModel:
        model_ref = model or self._model_ref
        files = locate_model(model_ref)
        backend_name = self._pick_backend(files)
        with self._lock:
            key = (backend_name, str(self._weights_of(files, backend_name).resolve()))
            if self._loaded is not None and self._loaded_key == key:
                self._model_ref = model_ref
                return self._loaded
            self.unload_model()
            started = time.perf_counter()
            backend: _Backend
            if backend_name == BACKEND_LLAMACPP:
                from src.utils.llamacpp_backend import LlamaCppBackend

                assert files.gguf is not None
                backend = LlamaCppBackend(files.gguf, context_window=self._context_window_override)
                folder, weights = files.gguf.parent, files.gguf
            else:
                folder, gguf_name = self._transformers_source(files)
                use_compute_threads_in_torch()  # here, on the one thread that computes (see load_model)
                backend = TransformersBackend(folder, gguf_file=gguf_name, context_window=self._context_window_override)
                weights = folder / gguf_name if gguf_name else folder
            self._backend, self._loaded_key = backend, key
            self._model_ref = model_ref
            self._loaded = LoadedModel(
                model_id=files.model_id,
                folder=folder.resolve(),
                device=backend.device,
                dtype=backend.dtype,
                context_window=backend.context_window,
                load_time_s=time.perf_counter() - started,
                backend=backend.name,
                weights=weights.resolve(),
            )
            logger.info(
                "Loaded %s with %s on %s (%s, %d CPU thread(s)) in %.1f s",
                files.model_id, backend.name, backend.device, backend.dtype, compute_threads(), self._loaded.load_time_s,
            )
            return self._loaded

    def _pick_backend(self, files: ModelFiles) -> str:
        if self._forced_backend is None:
            return choose_backend(files)
        from src.settings import normalize_backend
        from src.utils.backends import backends_for

        forced = normalize_backend(self._forced_backend)
        if forced not in backends_for(files):
            from src.errors import BackendUnavailableError

            raise BackendUnavailableError(files.model_id, forced, "its files do not allow it", backends_for(files))
        return forced

    @staticmethod
    def _weights_of(files: ModelFiles, backend_name: str) -> Path:
        if backend_name == BACKEND_LLAMACPP or not (files.transformers or files.embedded):
            assert files.gguf is not None
            return files.gguf
        return files.folder

    @staticmethod
    def _transformers_source(files: ModelFiles) -> tuple[Path, str | None]:
        """Where transformers loads from: the model folder; for the embedded model its converted copy (made now if
        needed); for a GGUF-only download the GGUF file itself (transformers de-quantizes it, slowly)."""
        if files.transformers:
            return files.folder, None
        if files.embedded:
            return resolve_local_model(files.model_id)[1], None
        assert files.gguf is not None
        return files.gguf.parent, files.gguf.name

    def unload_model(self) -> None:
        """Drop the model and free its memory (and the GPU cache)."""
        with self._lock:
            if self._backend is None:
                return
            backend, self._backend, self._loaded, self._loaded_key = self._backend, None, None, None
            backend.close()
            gc.collect()

    # --- prompts --------------------------------------------------------------------------------------------------

    def prepare_prompt(self, messages: Sequence[ChatMessage], max_new_tokens: int) -> PreparedPrompt:
        """Apply the chat template, leaving out the oldest turns (never the system prompt, never the last message)
        until prompt + reply fit the context window (``context_trimming``: a few encodes, however long the chat).
        Never sends more tokens than the model accepts."""
        loaded, backend = self._loaded_backend()
        window = loaded.context_window

        def check_stop() -> None:
            if shutdown.is_shutting_down():
                raise EngineStoppedError()

        fitted = fit_to_window(messages, backend.encode_chat, prompt_budget=window - max_new_tokens,
                               check_stop=check_stop)  # fmt: skip
        prompt_tokens = len(fitted.token_ids)
        if prompt_tokens >= window:
            raise ContextOverflowError(needed=prompt_tokens + 1, limit=window)
        allowed = min(max_new_tokens, window - prompt_tokens)
        if fitted.dropped_messages:
            logger.info("Left out %d old message(s) to fit the %d-token context window", fitted.dropped_messages, window)
        return PreparedPrompt(tuple(fitted.token_ids), fitted.dropped_messages, allowed, allowed < max_new_tokens)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids of the loaded model back to text (special tokens included)."""
        return self._loaded_backend()[1].decode(list(token_ids))

    def _loaded_backend(self) -> tuple[LoadedModel, _Backend]:
        """The loaded model and its backend, loading the current model first if none is (not under the lock: the
        load waits for the worker, which may need the lock to finish a reply)."""
        while True:
            with self._lock:
                if self._loaded is not None and self._backend is not None:
                    return self._loaded, self._backend
            self.load_model()

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

        def load_and_prepare() -> tuple[LoadedModel, _Backend, PreparedPrompt]:
            # On the worker, under the lock: no other load can swap the model between these steps.
            with self._lock:
                loaded = self._load_on_worker(model) if model or self._loaded is None else self._loaded
                backend = self._backend
                assert backend is not None
                return loaded, backend, self.prepare_prompt(chat, params.max_new_tokens)

        loaded, backend, prompt = self._worker.call(load_and_prepare)
        text_stream = TextStream()
        return text_stream.start(self._produce(text_stream, backend, loaded, prompt, params))

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
        backend: _Backend,
        loaded: LoadedModel,
        prompt: PreparedPrompt,
        params: GenerationParams,
    ) -> Iterator[str]:
        pieces: queue.Queue[object] = queue.Queue()
        sink = _TokenSink(pieces)
        stop_filter = StopStringFilter(params.stop)
        stop_requested = threading.Event()
        cancelled = text_stream.cancelled
        failure: list[BaseException] = []

        def should_stop() -> bool:
            return cancelled.is_set() or stop_requested.is_set() or shutdown.is_shutting_down()

        def run() -> None:
            try:
                with self._lock:
                    self._generating.set()
                    backend.generate(prompt.token_ids, params, prompt.max_new_tokens, sink, should_stop)
            except BaseException as exc:  # noqa: BLE001 - reported to the consumer, re-raised in its thread
                failure.append(exc)
            finally:
                self._generating.clear()
                pieces.put(_END)

        started = time.perf_counter()
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
                    yield shown
            worker.wait()
            if failure:
                raise failure[0]
            tail = stop_filter.flush()
            if tail and not cancelled.is_set():
                yield tail
            if cancelled.is_set():
                finish_reason = FINISH_CANCELLED
            elif stop_filter.stopped or sink.completion_tokens < prompt.max_new_tokens or sink.ended_on_eos:
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
            stats = sink.stats(prompt_tokens=prompt.prompt_tokens, started=started)
            text_stream.finish(
                loaded.model_id,
                finish_reason,
                stats,
                dropped_messages=prompt.dropped_messages,
                max_new_tokens_clamped_to=prompt.max_new_tokens if prompt.max_new_tokens_clamped else None,
            )
            logger.info(
                "Reply (%s): %d tokens after a %d-token prompt in %.2f s, first after %s s, %s tokens/s",
                finish_reason, stats.completion_tokens, stats.prompt_tokens, stats.total_s,
                f"{stats.time_to_first_token_s:.2f}" if stats.time_to_first_token_s is not None else "-",
                f"{stats.tokens_per_s:.1f}" if stats.tokens_per_s is not None else "-",
            )


class _Backend(Protocol):
    """What the engine needs from a backend. ``generate`` runs in the engine's worker thread."""

    name: str
    device: str
    dtype: str
    context_window: int

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def generate(
        self,
        token_ids: Sequence[int],
        params: GenerationParams,
        max_new_tokens: int,
        sink: _TokenSink,
        should_stop: Callable[[], bool],
    ) -> None: ...

    def close(self) -> None: ...


class TransformersBackend:
    """A transformers model folder (or a GGUF file de-quantized by transformers) on CUDA, MPS or the CPU."""

    name = BACKEND_TRANSFORMERS

    def __init__(self, folder: Path, *, gguf_file: str | None = None, context_window: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        settings = get_settings()
        self.device = pick_device(settings.device)
        torch_dtype = pick_dtype(self.device, settings.dtype)
        hf_logging.disable_progress_bar()
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
            if gguf_file:  # de-quantized in float32, then cast like any other model
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra).to(torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
            model = model.to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"Cannot load the model in {folder}: {exc}") from exc
        if tokenizer.chat_template is None:
            tokenizer.chat_template = _FALLBACK_TEMPLATE
        self.model, self.tokenizer = model, tokenizer
        self.dtype = str(torch_dtype).removeprefix("torch.")
        self.context_window = context_window or self._context_window_of(model, tokenizer)
        torch.set_grad_enabled(False)
        self.lean: Any = None
        if settings.lean_decoder:
            self._take_lean_decoder(int8=wants_int8_weights(self.device, settings.dtype))

    def _take_lean_decoder(self, *, int8: bool) -> None:
        from src.utils.lean_decoder import LeanDecoder, int8_weight_only_available, lean_decoder_unsupported

        reason = lean_decoder_unsupported(self.model)
        if reason is not None:
            logger.info("transformers' generate() runs this model: the lean decoder does not take %s", reason)
            return
        int8 = int8 and int8_weight_only_available()
        self.lean = LeanDecoder(self.model, int8=int8)
        if int8:
            self.dtype = DTYPE_INT8
        # What is left of the model (embeddings, norms, config) still serves its logits processors.
        self.lean.release_copied_weights()
        gc.collect()

    @staticmethod
    def _context_window_of(model: Any, tokenizer: Any) -> int:
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        tokenizer_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < window:
            window = tokenizer_max
        return int(window)

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], add_generation_prompt=True, tokenize=False
        )
        # The template already wrote the special tokens (BOS etc.); adding them again would double them.
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))

    def generate(
        self,
        token_ids: Sequence[int],
        params: GenerationParams,
        max_new_tokens: int,
        sink: _TokenSink,
        should_stop: Callable[[], bool],
    ) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        config = self._generation_config(params, max_new_tokens)
        streamer = _IncrementalDecoder(self.tokenizer, sink)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if self.lean is not None:
            self.lean.generate(
                token_ids,
                max_new_tokens=max_new_tokens,
                processors=self.model._get_logits_processor(
                    generation_config=config, input_ids_seq_length=len(token_ids), encoder_input_ids=None,
                    prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(), device="cpu",
                ),
                do_sample=bool(config.do_sample),
                eos_ids=set(_as_list(config.eos_token_id)) | set(_as_list(self.tokenizer.eos_token_id)),
                streamer=streamer,
                should_stop=should_stop,
            )
            return

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

        input_ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
            )

    def _generation_config(self, params: GenerationParams, max_new_tokens: int) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        tokenizer = self.tokenizer
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

    def close(self) -> None:
        device = self.device
        self.model = self.tokenizer = None
        gc.collect()
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


_END = object()
_T = TypeVar("_T")


class _GenerationWorker:
    """A single daemon thread that runs generation jobs in turn (a daemon, so that a stuck job cannot keep the
    process alive; the shutdown stops its work and frees its models before the interpreter goes, see
    ``_release_engines``)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def call(self, function: Callable[[], _T]) -> _T:
        """Run ``function`` on the worker thread (at once when already on it) and return or raise its result."""
        if threading.current_thread() is self._thread:
            return function()
        outcome: list[Any] = []

        def job() -> None:
            try:
                outcome.append((True, function()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome.append((False, exc))

        self.submit(job).wait()
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value  # type: ignore[no-any-return]

    def submit(self, job: Callable[[], None], *, last: bool = False) -> threading.Event:
        """Queue ``job``; the returned event is set once it has finished. After a ``last`` job nothing more is
        accepted (``EngineStoppedError``): the process is shutting down."""
        done = threading.Event()
        with self._start_lock:
            if self._closed or (shutdown.is_shutting_down() and not last):
                raise EngineStoppedError()
            self._closed = last
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hearth-generate", daemon=True)
                self._thread.start()
            self._jobs.put((job, done))
        return done

    def close(self, last_job: Callable[[], None], deadline: float) -> bool:
        """Run ``last_job`` after every queued job, then accept no more. Returns False if it had not run by
        ``deadline`` (a job that ignores cancellation; the process then exits without it)."""
        return self.submit(last_job, last=True).wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()


_SHARED_WORKER = _GenerationWorker()
_engines: weakref.WeakSet[LocalLLMEngine] = weakref.WeakSet()


def _release_engines(deadline: float) -> None:
    """At shutdown, once the worker has finished what it was doing (the replies were cancelled first, and
    ``should_stop`` is true for any other), unload every engine's model on the worker, where it was loaded.
    llama.cpp's threads are then joined while the interpreter still runs, instead of running on into ``exit()``,
    which destroys the C++ statics they use (a SIGSEGV after Ctrl+C stopped a reply)."""
    gave_up = threading.Event()

    def unload_all() -> None:
        if gave_up.is_set():  # too late: freeing the model now would race the interpreter's exit
            return
        for engine in list(_engines):
            try:
                engine.unload_model()
            except Exception:
                logger.exception("Could not unload a model at shutdown")

    if not _SHARED_WORKER.close(unload_all, deadline):
        gave_up.set()
        logger.warning("The engine was still busy at shutdown; its model was not freed before exit")


shutdown.on_shutdown(_release_engines)


class _TokenSink:
    """Where a backend reports progress: new tokens with the text they completed (possibly none: half a
    character), then whether it ended on end-of-sequence. Keeps the counts and timings for the stats."""

    def __init__(self, out: queue.Queue[object]) -> None:
        self._out = out
        self.completion_tokens = 0
        self.ended_on_eos = False
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def tokens(self, count: int, text: str) -> None:
        if count:
            now = time.perf_counter()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
            self.completion_tokens += count
        if text:
            self._out.put(text)

    def finished(self, *, eos: bool) -> None:
        self.ended_on_eos = eos

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


class _IncrementalDecoder:
    """A transformers streamer that turns token ids into text pieces as they come.

    It decodes a sliding window of ids (the approach of text-generation-inference) so that each step costs O(1)
    rather than re-decoding the whole reply, and holds back text that ends in an incomplete UTF-8 sequence, so a
    Chinese character split over two tokens is never shown as '\ufffd'.
    """

    def __init__(self, tokenizer: Any, sink: _TokenSink) -> None:
        self._tokenizer = tokenizer
        self._sink = sink
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prompt_seen = False
        self._eos_ids = set(_as_list(tokenizer.eos_token_id))

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands the streamer the prompt itself
            self._prompt_seen = True
            return
        new_ids = [int(i) for i in value.reshape(-1).tolist()]
        self._sink.finished(eos=bool(new_ids) and new_ids[-1] in self._eos_ids)
        self._ids.extend(new_ids)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        text = ""
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            text = full[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._sink.tokens(len(new_ids), text)

    def end(self) -> None:
        # A reply cut by max_new_tokens can end inside a multi-byte character: drop that half character.
        tail = self._tokenizer.decode(self._ids[self._prefix_offset :], skip_special_tokens=True).rstrip("\ufffd")
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        if len(tail) > len(prefix):
            self._sink.tokens(0, tail[len(prefix) :])


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


__all__ = [
    "LoadedModel",
    "LocalLLMEngine",
    "PreparedPrompt",
    "TransformersBackend",
    "available_backends",
    "get_model_backend",
    "set_model_backend",
]
