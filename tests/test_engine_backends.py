"""Which backend runs a model: auto, the per-model setting (SQLite) and the HEARTH_BACKEND override."""

from __future__ import annotations

import pytest

from src.errors import BackendUnavailableError, ConfigError
from src.settings import BACKEND_AUTO, BACKEND_LLAMACPP, BACKEND_TRANSFORMERS, ENV_BACKEND, reload_settings
from src.utils.backends import available_backends, choose_backend, get_model_backend, set_model_backend
from src.utils.catalog import locate_model, resolve_local_model
from src.utils.llamacpp_backend import llamacpp_available
from src.utils.LocalLLMEngine import LocalLLMEngine

pytestmark = pytest.mark.skipif(not llamacpp_available(), reason="xllamacpp is not installed")

EMBEDDED = "smollm2-135m"


def test_the_embedded_model_chats_on_llamacpp_by_default() -> None:
    assert available_backends(EMBEDDED) == [BACKEND_AUTO, BACKEND_LLAMACPP, BACKEND_TRANSFORMERS]
    assert get_model_backend(EMBEDDED) == BACKEND_AUTO
    files = locate_model(EMBEDDED)
    assert files.gguf is not None and files.gguf.suffix == ".gguf" and files.embedded
    assert choose_backend(files) == BACKEND_LLAMACPP


def test_the_transformers_copy_is_still_made_for_lora_and_evolution() -> None:
    model_id, folder = resolve_local_model(EMBEDDED)
    assert model_id == EMBEDDED and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    files = locate_model(str(folder))  # that folder by path: a transformers model, no GGUF
    assert files.gguf is None and available_backends(str(folder)) == [BACKEND_AUTO, BACKEND_TRANSFORMERS]
    assert choose_backend(files) == BACKEND_TRANSFORMERS


def test_the_per_model_choice_is_stored_and_validated() -> None:
    assert set_model_backend(EMBEDDED, "transformers") == BACKEND_TRANSFORMERS
    assert get_model_backend(EMBEDDED) == BACKEND_TRANSFORMERS
    assert choose_backend(locate_model(EMBEDDED)) == BACKEND_TRANSFORMERS
    assert set_model_backend(EMBEDDED, "llamacpp") == BACKEND_LLAMACPP  # spelling variants are accepted
    assert set_model_backend(EMBEDDED, "auto") == BACKEND_AUTO
    assert get_model_backend(EMBEDDED) == BACKEND_AUTO
    with pytest.raises(ConfigError, match="Unknown backend"):
        set_model_backend(EMBEDDED, "onnx")
    _, folder = resolve_local_model(EMBEDDED)
    with pytest.raises(BackendUnavailableError, match="no GGUF file"):
        set_model_backend(str(folder), "llama.cpp")


def test_hearth_backend_overrides_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    set_model_backend(EMBEDDED, "llama.cpp")
    monkeypatch.setenv(ENV_BACKEND, "transformers")
    reload_settings()
    assert choose_backend(locate_model(EMBEDDED)) == BACKEND_TRANSFORMERS
    # Forced llama.cpp on a model without a GGUF falls back to what works instead of failing.
    monkeypatch.setenv(ENV_BACKEND, "llama.cpp")
    reload_settings()
    _, folder = resolve_local_model(EMBEDDED)
    assert choose_backend(locate_model(str(folder))) == BACKEND_TRANSFORMERS
    monkeypatch.setenv(ENV_BACKEND, "tensorrt")
    reload_settings()
    with pytest.raises(ConfigError, match="HEARTH_BACKEND"):
        choose_backend(locate_model(EMBEDDED))


def test_the_shared_engine_reports_its_backend_and_switches_on_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LocalLLMEngine()
    try:
        assert engine.load_model(EMBEDDED).backend == BACKEND_LLAMACPP
        set_model_backend(EMBEDDED, "transformers")
        loaded = engine.load_model(EMBEDDED)  # a different backend for the same model is a different load
        assert loaded.backend == BACKEND_TRANSFORMERS and engine.loaded is loaded
        assert engine.generate([{"role": "user", "content": "Hi"}], temperature=0, max_new_tokens=2)
    finally:
        engine.unload_model()


def test_hearth_threads_is_parsed_and_bad_values_are_named() -> None:
    from src.settings import parse_threads

    assert parse_threads(None) is None and parse_threads(" auto ") is None and parse_threads("") is None
    assert parse_threads("3") == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ConfigError, match="HEARTH_THREADS"):
            parse_threads(bad)


def test_the_gui_leaves_a_core_for_its_renderer_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.utils import cpu

    assert cpu.compute_threads() == cpu.available_cpus()  # command line, server: every core
    monkeypatch.setattr(cpu, "available_cpus", lambda: 2)
    assert cpu.leave_a_core_for_the_ui() == 1
    monkeypatch.setattr(cpu, "available_cpus", lambda: 1)
    monkeypatch.delenv("HEARTH_THREADS")
    assert cpu.leave_a_core_for_the_ui() == 1  # never zero
    monkeypatch.setenv("HEARTH_THREADS", "5")
    assert cpu.leave_a_core_for_the_ui() == 5  # the user's own choice wins


def test_both_backends_compute_with_the_configured_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    engine = LocalLLMEngine()
    original = engine.run_on_engine_thread(torch.get_num_threads)
    monkeypatch.setenv("HEARTH_THREADS", "1")
    reload_settings()
    try:
        engine.load_model(EMBEDDED)
        assert engine._backend is not None and engine._backend.n_threads == 1  # type: ignore[attr-defined]
        set_model_backend(EMBEDDED, "transformers")
        assert engine.load_model(EMBEDDED).backend == BACKEND_TRANSFORMERS
        assert engine.run_on_engine_thread(torch.get_num_threads) == 1
        assert engine.generate([{"role": "user", "content": "Hi"}], temperature=0, max_new_tokens=2)
    finally:
        engine.unload_model()
        engine.run_on_engine_thread(lambda: torch.set_num_threads(original))
