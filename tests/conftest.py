"""Shared fixtures. Every test runs against a fresh data directory and a keyring that cannot reach the user's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest
from keyring.backend import KeyringBackend

from src.settings import ENV_DATA_DIR, ENV_HF_ENDPOINT, ENV_HF_TOKEN, ENV_MODELS_DIR, reload_settings
from tests.keyring_backends import InMemoryKeyring

# Where the models are (the embedded one converted once, about 20 s) and where Chromium is: not settings of a run.
_KEPT_VARIABLES = frozenset({ENV_MODELS_DIR, "HEARTH_E2E_CHROMIUM"})


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
    # A developer's own settings must not change what the tests run (HEARTH_DB_PATH would even escape the
    # temporary folder): every HEARTH_* variable goes, but the few that say where things are on this machine.
    for name in list(os.environ):
        if name.startswith("HEARTH_") and name not in _KEPT_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.delenv(ENV_HF_ENDPOINT, raising=False)
    monkeypatch.delenv(ENV_HF_TOKEN, raising=False)
    monkeypatch.setenv(ENV_DATA_DIR, str(data_dir))
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
