"""Shared fixtures. Every test runs against a fresh data directory and a keyring that cannot reach the user's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest
from keyring.backend import KeyringBackend

from src.settings import ENV_API_KEY, ENV_DATA_DIR, ENV_DB_PATH, ENV_HF_ENDPOINT, ENV_HF_TOKEN, ENV_MODELS_DIR, reload_settings
from tests.keyring_backends import InMemoryKeyring


@contextmanager
def _installed_keyring(backend: KeyringBackend) -> Iterator[KeyringBackend]:
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture(autouse=True)
def hearth_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point all of Hearth's state at a fresh temporary folder (the models folder is left alone)."""
    data_dir = tmp_path / "hearth-data"
    monkeypatch.setenv(ENV_DATA_DIR, str(data_dir))
    # A developer's own HEARTH_DB_PATH would escape the temporary folder, and HEARTH_API_KEY would change results.
    monkeypatch.delenv(ENV_DB_PATH, raising=False)
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    monkeypatch.delenv(ENV_HF_ENDPOINT, raising=False)
    monkeypatch.delenv(ENV_HF_TOKEN, raising=False)
    monkeypatch.delenv("HEARTH_MAX_NEW_TOKENS", raising=False)
    monkeypatch.delenv("HEARTH_DTYPE", raising=False)
    monkeypatch.delenv("HEARTH_LEAN_DECODER", raising=False)
    monkeypatch.delenv("HEARTH_THREADS", raising=False)
    # The agent company writes projects: never into the repository's own WareHouse during tests.
    monkeypatch.setenv("HEARTH_WAREHOUSE_DIR", str(tmp_path / "WareHouse"))
    reload_settings()
    yield data_dir
    monkeypatch.undo()
    reload_settings()


@pytest.fixture(autouse=True)
def _keyring_isolation() -> Iterator[None]:
    """No test may read or overwrite the user's real API keys: by default there is no keyring at all."""
    with _installed_keyring(keyring.backends.fail.Keyring()):
        yield


@pytest.fixture
def memory_keyring() -> Iterator[InMemoryKeyring]:
    backend = InMemoryKeyring()
    with _installed_keyring(backend):
        yield backend


@pytest.fixture
def no_keyring() -> Iterator[None]:
    with _installed_keyring(keyring.backends.fail.Keyring()):
        yield


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh models folder (HEARTH_MODELS_DIR) holding only the embedded model, linked rather than converted."""
    from src.utils.catalog import resolve_local_model

    _, embedded = resolve_local_model("smollm2-135m")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "smollm2-135m").symlink_to(embedded, target_is_directory=True)
    monkeypatch.setenv(ENV_MODELS_DIR, str(folder))
    reload_settings()
    return folder
