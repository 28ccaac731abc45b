"""LLMConfigDB on a real SQLite file, with an in-memory fake keyring (or none at all)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import keyring
import keyring.backends.fail
import pytest

from src import settings as hearth_settings
from src.db import LLMConfigDB, get_app_setting, get_database, set_app_setting
from src.db.llm_config_db import CURRENT_CONFIG_SETTING
from src.errors import ConfigError, ConfigNotFoundError, KeyringUnavailableError, UnknownProviderError
from src.settings import ENV_API_KEY, reload_settings
from tests.keyring_backends import InMemoryKeyring, LockedKeyring

OLLAMA_URL = "http://127.0.0.1:11434/v1"


def _rows() -> int:
    return get_database().execute_sql("SELECT COUNT(*) FROM llm_config").fetchone()[0]


def _entry(backend: InMemoryKeyring, config_id: int) -> str | None:
    return backend.entries.get((hearth_settings.KEYRING_SERVICE, f"llm_config:{config_id}"))


@pytest.fixture
def locked_keyring() -> Iterator[LockedKeyring]:
    previous = keyring.get_keyring()
    backend = LockedKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def api_key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV_API_KEY, "key-from-environment")
    reload_settings()
    return "key-from-environment"


def test_readme_sequence() -> None:
    db = LLMConfigDB()
    assert db.get_current_config() is None
    config_id = db.save_config(provider="local_model", model="qwen2.5-0.5b", base_url=None, api_key=None)
    db.set_current_config(config_id)

    current = db.get_current_config()
    assert current is not None
    assert (current.id, current.provider, current.model, current.base_url, current.has_api_key) == (
        config_id,
        "local_model",
        "qwen2.5-0.5b",
        None,
        False,
    )
    assert current.created_at.tzinfo is not None
    assert db.list_configs() == [current] == [db.get_config(config_id)]
    assert db.get_api_key(config_id) is None
    assert LLMConfigDB().get_current_config() == current  # stored, not just remembered


def test_api_key_lives_only_in_the_keyring(memory_keyring: InMemoryKeyring) -> None:
    key = f"sk-hearth-{uuid.uuid4().hex}"
    db = LLMConfigDB()
    config_id = db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key=f"  {key}\n")
    db.set_current_config(config_id)

    assert db.get_config(config_id).has_api_key is True
    assert db.get_api_key(config_id) == key
    assert _entry(memory_keyring, config_id) == key

    data_dir = hearth_settings.get_settings().data_dir
    files = [path for path in data_dir.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"hearth.sqlite3", "hearth.sqlite3-wal"} <= names
    contents = b"".join(path.read_bytes() for path in files)
    assert b"llama3.2" in contents  # the scan does see what was written...
    for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
        assert key.encode(encoding) not in contents  # ...and the key is not among it


def test_delete_config_removes_its_keyring_entry(memory_keyring: InMemoryKeyring) -> None:
    db = LLMConfigDB()
    doomed = db.save_config("openai_compatible", "gpt-4o-mini", "https://api.openai.com/v1", api_key="sk-one")
    kept = db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key="sk-two")
    db.delete_config(doomed)

    assert _entry(memory_keyring, doomed) is None
    assert _entry(memory_keyring, kept) == "sk-two"
    with pytest.raises(ConfigNotFoundError):
        db.get_config(doomed)
    with pytest.raises(ConfigNotFoundError):
        db.delete_config(doomed)
    assert [c.id for c in db.list_configs()] == [kept]
    # Ids are never reused, so a leftover keyring entry could not attach itself to a newer config.
    assert db.save_config("local_model", "qwen2.5-0.5b") > kept


@pytest.mark.usefixtures("no_keyring")
def test_without_a_keyring_saving_a_key_fails_with_a_fix_and_saves_nothing() -> None:
    db = LLMConfigDB()
    with pytest.raises(KeyringUnavailableError) as raised:
        db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key="sk-secret")
    message = str(raised.value)
    assert "HEARTH_API_KEY" in message and "keyring" in message.lower()
    assert "sk-secret" not in message
    assert _rows() == 0
    assert db.list_configs() == []
    # A config without a key needs no keyring.
    assert db.get_config(db.save_config("openai_compatible", "llama3.2", OLLAMA_URL)).has_api_key is False


def test_a_keyring_failing_mid_save_rolls_the_row_back(locked_keyring: LockedKeyring) -> None:
    db = LLMConfigDB()
    with pytest.raises(KeyringUnavailableError, match="KeyringLocked"):
        db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key="sk-secret")
    assert _rows() == 0


@pytest.mark.usefixtures("no_keyring")
def test_environment_key_works_without_a_keyring(api_key_env: str) -> None:
    db = LLMConfigDB()
    config_id = db.save_config("openai_compatible", "llama3.2", OLLAMA_URL)
    assert db.get_api_key(config_id) == api_key_env


def test_environment_key_stands_in_when_the_keyring_goes_away(
    memory_keyring: InMemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = LLMConfigDB()
    config_id = db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key="sk-stored")
    keyring.set_keyring(keyring.backends.fail.Keyring())  # memory_keyring restores the previous one afterwards
    with pytest.raises(KeyringUnavailableError):
        db.get_api_key(config_id)
    monkeypatch.setenv(ENV_API_KEY, "sk-env")
    reload_settings()
    assert db.get_api_key(config_id) == "sk-env"
    keyring.set_keyring(memory_keyring)
    assert db.get_api_key(config_id) == "sk-stored"  # a stored key wins when it can be read


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"provider": "anthropic", "model": "claude"}, UnknownProviderError, "local_model, openai_compatible"),
        ({"provider": "openai_compatible", "model": "llama3.2"}, ConfigError, "needs a base URL"),
        ({"provider": "openai_compatible", "model": "llama3.2", "base_url": "   "}, ConfigError, "needs a base URL"),
        ({"provider": "openai_compatible", "model": "m", "base_url": "ftp://host/v1"}, ConfigError, "http://"),
        ({"provider": "openai_compatible", "model": "m", "base_url": "localhost:11434"}, ConfigError, "http://"),
        ({"provider": "openai_compatible", "model": "m", "base_url": "http://"}, ConfigError, "name a host"),
        ({"provider": "openai_compatible", "model": "m", "base_url": "http://h:port/v1"}, ConfigError, "http://"),
        ({"provider": "local_model", "model": "   "}, ConfigError, "model name is empty"),
    ],
)
def test_invalid_configs_are_rejected_and_not_saved(kwargs: dict[str, str], error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        LLMConfigDB().save_config(**kwargs)
    assert _rows() == 0


def test_values_are_cleaned() -> None:
    db = LLMConfigDB()
    remote = db.get_config(db.save_config(" openai_compatible ", "  llama3.2 ", "  HTTP://127.0.0.1:11434/v1/  "))
    assert (remote.provider, remote.model) == ("openai_compatible", "llama3.2")
    assert remote.base_url == "HTTP://127.0.0.1:11434/v1"
    # A local model has no server, so a stray URL is not kept; local model names are not checked here.
    local = db.get_config(db.save_config("local_model", "not-in-any-catalog", base_url=OLLAMA_URL))
    assert (local.model, local.base_url) == ("not-in-any-catalog", None)
    # A blank key is no key.
    assert db.get_config(db.save_config("local_model", "qwen2.5-0.5b", api_key="   ")).has_api_key is False


def test_update_config(memory_keyring: InMemoryKeyring) -> None:
    db = LLMConfigDB()
    config_id = db.save_config("local_model", "qwen2.5-0.5b")
    created = db.get_config(config_id)

    db.update_config(config_id, model="smollm2-135m")
    updated = db.get_config(config_id)
    assert (updated.provider, updated.model) == ("local_model", "smollm2-135m")
    assert updated.updated_at > created.updated_at and updated.created_at == created.created_at

    with pytest.raises(ConfigError, match="needs a base URL"):
        db.update_config(config_id, provider="openai_compatible")
    assert db.get_config(config_id) == updated  # a rejected update changes nothing

    db.update_config(config_id, provider="openai_compatible", base_url=OLLAMA_URL, api_key="sk-new")
    remote = db.get_config(config_id)
    assert (remote.provider, remote.base_url, remote.has_api_key) == ("openai_compatible", OLLAMA_URL, True)
    assert db.get_api_key(config_id) == "sk-new"

    db.update_config(config_id, model="llama3.2")  # no api_key argument: the key stays
    assert db.get_api_key(config_id) == "sk-new"

    db.update_config(config_id, api_key="")
    assert db.get_config(config_id).has_api_key is False
    assert _entry(memory_keyring, config_id) is None
    assert db.get_api_key(config_id) is None

    db.update_config(config_id, provider="local_model")  # the URL goes with the provider that needed it
    assert db.get_config(config_id).base_url is None
    with pytest.raises(ConfigNotFoundError):
        db.update_config(12345, model="x")


def test_update_with_a_locked_keyring_changes_nothing(memory_keyring: InMemoryKeyring) -> None:
    db = LLMConfigDB()
    config_id = db.save_config("openai_compatible", "llama3.2", OLLAMA_URL, api_key="sk-old")
    before = db.get_config(config_id)
    keyring.set_keyring(LockedKeyring())
    with pytest.raises(KeyringUnavailableError):
        db.update_config(config_id, model="other", api_key="sk-new")
    with pytest.raises(KeyringUnavailableError):
        db.delete_config(config_id)
    keyring.set_keyring(memory_keyring)
    assert db.get_config(config_id) == before
    assert db.get_api_key(config_id) == "sk-old"


def test_delete_current_config() -> None:
    db = LLMConfigDB()
    first = db.save_config("local_model", "qwen2.5-0.5b")
    second = db.save_config("local_model", "smollm2-135m")
    db.set_current_config(first)

    db.delete_config(second)  # not the current one: current stays
    assert db.get_current_config().id == first  # type: ignore[union-attr]

    db.delete_config(first)
    assert db.get_current_config() is None
    assert get_app_setting(CURRENT_CONFIG_SETTING) is None
    with pytest.raises(ConfigNotFoundError):
        db.set_current_config(first)


def test_stale_current_setting_is_ignored() -> None:
    set_app_setting(CURRENT_CONFIG_SETTING, "not-a-number")
    assert LLMConfigDB().get_current_config() is None
    set_app_setting(CURRENT_CONFIG_SETTING, "77")
    assert LLMConfigDB().get_current_config() is None
