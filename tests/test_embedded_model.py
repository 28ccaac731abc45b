"""The embedded model's one-time conversion from the packaged GGUF: real, atomic, and safe after a crash."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from src.errors import EmbeddedModelMissingError
from src.utils import embedded_model
from src.utils.catalog import is_loadable_model_dir, resolve_local_model
from src.utils.LocalLLMEngine import LocalLLMEngine


def test_real_conversion_from_the_packaged_gguf(tmp_path: Path) -> None:
    target = tmp_path / "smollm2-135m"
    assert embedded_model.ensure_embedded_model(target) == target
    assert is_loadable_model_dir(target)
    assert not [p for p in tmp_path.iterdir() if p.name != target.name], "no temporary folder is left behind"
    engine = LocalLLMEngine(str(target))
    try:
        reply = engine.generate([{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_new_tokens=8)
    finally:
        engine.unload_model()
    assert "Paris" in reply


def _fast_convert_from(source: Path):  # a stand-in for the 20 s conversion: copies the already converted files
    def convert(gguf: Path, out_dir: Path) -> None:
        shutil.copytree(source, out_dir)

    return convert


def test_a_crash_mid_conversion_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, converted = resolve_local_model("smollm2-135m")
    target = tmp_path / "smollm2-135m"

    def crash(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir()
        shutil.copy(converted / "config.json", out_dir / "config.json")
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # like Ctrl+C or a kill in the middle

    monkeypatch.setattr(embedded_model, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        embedded_model.ensure_embedded_model(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(embedded_model, "_convert", _fast_convert_from(converted))
    assert is_loadable_model_dir(embedded_model.ensure_embedded_model(target))


def test_leftovers_of_a_killed_conversion_are_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, converted = resolve_local_model("smollm2-135m")
    target = tmp_path / "smollm2-135m"
    stale = tmp_path / ".smollm2-135m.converting-999999999-deadbeef"  # no such process
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    monkeypatch.setattr(embedded_model, "_convert", _fast_convert_from(converted))
    embedded_model.ensure_embedded_model(target)
    assert not stale.exists()


def test_a_damaged_folder_is_kept_aside_and_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, converted = resolve_local_model("smollm2-135m")
    target = tmp_path / "smollm2-135m"
    target.mkdir()
    (target / "config.json").write_text("{}")  # weights deleted by hand
    monkeypatch.setattr(embedded_model, "_convert", _fast_convert_from(converted))
    embedded_model.ensure_embedded_model(target)
    assert is_loadable_model_dir(target)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("smollm2-135m.broken-")]
    assert len(aside) == 1 and (aside[0] / "config.json").read_text() == "{}"


def test_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelMissingError, match="install_dependencies.py"):
        embedded_model.ensure_embedded_model(tmp_path / "smollm2-135m")
