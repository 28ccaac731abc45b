"""Which engine backend runs a local model: llama.cpp (GGUF files) or transformers.

``auto`` (the default) picks llama.cpp whenever the model has a GGUF file and xllamacpp is installed: several times
faster on a CPU. transformers runs everything else (safetensors models) and whatever needs the weights in PyTorch
(LoRA training in the evolution simulation, which loads transformers itself). Users choose per model in the settings
(stored in SQLite); ``HEARTH_BACKEND`` overrides that choice for every model it can apply to.
"""

from __future__ import annotations

import logging

from src.errors import BackendUnavailableError, ConfigError
from src.settings import (
    BACKEND_AUTO,
    BACKEND_LLAMACPP,
    BACKEND_TRANSFORMERS,
    BACKENDS,
    ENV_BACKEND,
    get_settings,
    normalize_backend,
)
from src.utils.catalog import ModelFiles, locate_model
from src.utils.llamacpp_backend import llamacpp_available

logger = logging.getLogger(__name__)

_SETTING_PREFIX = "model_backend:"


def backends_for(files: ModelFiles) -> list[str]:
    """The backends that can run these files, fastest first."""
    out = []
    if files.gguf is not None and llamacpp_available():
        out.append(BACKEND_LLAMACPP)
    if files.can_use_transformers:
        out.append(BACKEND_TRANSFORMERS)
    return out


def available_backends(model_id: str) -> list[str]:
    """For the settings page: ``["auto", ...the backends this model can run on]``."""
    return [BACKEND_AUTO, *backends_for(locate_model(model_id))]


def get_model_backend(model_id: str) -> str:
    """The user's stored choice for ``model_id`` ("auto" when none)."""
    from src.db.database import get_app_setting

    return normalize_backend(get_app_setting(_SETTING_PREFIX + model_id) or BACKEND_AUTO)


def set_model_backend(model_id: str, backend: str) -> str:
    """Store the backend for ``model_id`` ("auto" clears the choice); refuses one the model cannot run on.

    Takes effect the next time the model is loaded (``LocalLLMEngine.shared().unload_model()`` to apply it now).
    """
    from src.db.database import set_app_setting

    backend = normalize_backend(backend)
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend != BACKEND_AUTO:
        files = locate_model(model_id)
        available = backends_for(files)
        if backend not in available:
            raise BackendUnavailableError(files.model_id, backend, _why_not(files, backend), available)
    set_app_setting(_SETTING_PREFIX + model_id, None if backend == BACKEND_AUTO else backend)
    return backend


def choose_backend(files: ModelFiles) -> str:
    """HEARTH_BACKEND if set, else the stored per-model choice, else auto: llama.cpp when it can, transformers
    otherwise. A choice that no longer applies (xllamacpp uninstalled, HEARTH_BACKEND=llama.cpp for a safetensors
    model) falls back to what works, with a warning."""
    forced = get_settings().backend
    if forced not in BACKENDS:
        raise ConfigError(f"{ENV_BACKEND}={forced!r} is not a backend; use one of {', '.join(BACKENDS)}.")
    wanted = forced if forced != BACKEND_AUTO else get_model_backend(files.model_id)
    available = backends_for(files)
    if not available:
        raise BackendUnavailableError(files.model_id, wanted, "no backend can load its files", available)
    if wanted in available:
        return wanted
    if wanted != BACKEND_AUTO:
        logger.warning(
            "%s cannot run on %s (%s); using %s", files.model_id, wanted, _why_not(files, wanted), available[0]
        )
    return available[0]


def _why_not(files: ModelFiles, backend: str) -> str:
    if backend == BACKEND_LLAMACPP:
        return "it has no GGUF file" if files.gguf is None else "xllamacpp is not installed"
    return "no transformers weights"


__all__ = [
    "BACKEND_AUTO",
    "BACKEND_LLAMACPP",
    "BACKEND_TRANSFORMERS",
    "available_backends",
    "backends_for",
    "choose_backend",
    "get_model_backend",
    "set_model_backend",
]
