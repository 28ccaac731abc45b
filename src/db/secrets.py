"""API keys in the OS keyring. The only module that talks to ``keyring``.

There is deliberately no fallback to a file: without a usable keyring every call raises
``KeyringUnavailableError``, whose message tells the user how to fix it (or to use HEARTH_API_KEY).
Keys are never logged and never part of an error message.
"""

from __future__ import annotations

import logging

import keyring
import keyring.backends.fail
import keyring.backends.null
import keyring.errors
from keyring.backend import KeyringBackend

from src import settings as _settings
from src.errors import KeyringUnavailableError

log = logging.getLogger(__name__)

# "fail" raises on every call; "null" silently forgets what it is given, which would lose the key without a word.
_UNUSABLE_BACKENDS = (keyring.backends.fail.Keyring, keyring.backends.null.Keyring)


def _username(config_id: int) -> str:
    return f"llm_config:{config_id}"


def _unavailable(exc: keyring.errors.KeyringError) -> KeyringUnavailableError:
    return KeyringUnavailableError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _backend() -> KeyringBackend:
    try:
        backend = keyring.get_keyring()
    except keyring.errors.KeyringError as exc:
        raise _unavailable(exc) from exc
    if isinstance(backend, _UNUSABLE_BACKENDS):
        raise KeyringUnavailableError(f"no usable keyring backend was found; keyring selected {backend.name}")
    return backend


def check_keyring_available() -> None:
    """Raise KeyringUnavailableError now if no backend is configured (it cannot detect a locked keyring)."""
    _backend()


def store_api_key(config_id: int, key: str) -> None:
    if not key:
        raise ValueError("refusing to store an empty API key")
    backend = _backend()
    try:
        backend.set_password(_settings.KEYRING_SERVICE, _username(config_id), key)
    except keyring.errors.KeyringError as exc:
        raise _unavailable(exc) from exc
    log.debug("Stored the API key of LLM config %s in %s", config_id, backend.name)


def load_api_key(config_id: int) -> str | None:
    backend = _backend()
    try:
        return backend.get_password(_settings.KEYRING_SERVICE, _username(config_id))
    except keyring.errors.KeyringError as exc:
        raise _unavailable(exc) from exc


def delete_api_key(config_id: int) -> None:
    """Remove the key of this config; no error if there is none."""
    backend = _backend()
    try:
        backend.delete_password(_settings.KEYRING_SERVICE, _username(config_id))
    except keyring.errors.PasswordDeleteError:
        # What backends raise for a missing entry; there is nothing to delete.
        log.debug("No API key of LLM config %s in %s", config_id, backend.name)
    except keyring.errors.KeyringError as exc:
        raise _unavailable(exc) from exc
    else:
        log.debug("Deleted the API key of LLM config %s from %s", config_id, backend.name)
