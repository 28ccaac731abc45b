"""LLM configurations: which provider and model to use, and where its API key is.

Rows live in SQLite; API keys live only in the OS keyring (``src.db.secrets``). The current configuration's id
is the app setting ``current_llm_config_id``.

    db = LLMConfigDB()
    config_id = db.save_config(provider="local_model", model="qwen2.5-0.5b", base_url=None, api_key=None)
    db.set_current_config(config_id)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import peewee

from src.db.database import get_app_setting, get_database, set_app_setting, write_transaction
from src.db.models import LLMConfig, utc_now
from src.db.secrets import check_keyring_available, delete_api_key, load_api_key, store_api_key
from src.errors import ConfigError, ConfigNotFoundError, KeyringUnavailableError, UnknownProviderError
from src.settings import get_settings

log = logging.getLogger(__name__)

PROVIDERS = ("local_model", "openai_compatible")
CURRENT_CONFIG_SETTING = "current_llm_config_id"


@dataclass(frozen=True)
class LLMConfigRecord:
    id: int
    provider: str
    model: str
    base_url: str | None
    has_api_key: bool
    created_at: datetime
    updated_at: datetime


def _record(row: LLMConfig) -> LLMConfigRecord:
    return LLMConfigRecord(
        id=row.id,
        provider=row.provider,
        model=row.model,
        base_url=row.base_url,
        has_api_key=bool(row.has_api_key),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _validated(provider: Any, model: Any, base_url: Any) -> tuple[str, str, str | None]:
    """Clean and check a configuration; return (provider, model, base_url) as they will be stored."""
    provider = provider.strip() if isinstance(provider, str) else provider
    if provider not in PROVIDERS:
        raise UnknownProviderError(str(provider), list(PROVIDERS))
    model = model.strip() if isinstance(model, str) else ""
    if not model:
        raise ConfigError(
            "The model name is empty. Enter a model, e.g. qwen2.5-0.5b for a local model, "
            "or the model id the server lists for an OpenAI-compatible server."
        )
    url = base_url.strip() if isinstance(base_url, str) else ""
    if provider == "local_model":
        # A local model has no server; a URL left over from another provider would only confuse later readers.
        return provider, model, None
    if not url:
        raise ConfigError(
            "The openai_compatible provider needs a base URL, e.g. http://127.0.0.1:11434/v1 (Ollama) "
            "or https://api.openai.com/v1."
        )
    if not _is_http_url(url):
        raise ConfigError(
            f"The base URL {url!r} is not valid: it must start with http:// or https:// and name a host "
            "(and optionally a port), e.g. http://127.0.0.1:11434/v1."
        )
    # Providers append paths such as /chat/completions; a trailing slash would double it.
    return provider, model, url.rstrip("/")


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _cleaned_key(api_key: str | None) -> str | None:
    if api_key is None:
        return None
    return api_key.strip() or None


class LLMConfigDB:
    def __init__(self, db: peewee.Database | None = None) -> None:
        self._db = db if db is not None else get_database()

    def save_config(
        self, provider: str, model: str, base_url: str | None = None, api_key: str | None = None
    ) -> int:
        """Store a new configuration and return its id. With a key, the row and the key are saved together or
        not at all: if the keyring fails, KeyringUnavailableError propagates and no row is left behind."""
        provider, model, base_url = _validated(provider, model, base_url)
        key = _cleaned_key(api_key)
        if key is not None:
            # Fail before taking the write lock when there is no backend at all.
            check_keyring_available()
        now = utc_now()
        # The keyring call runs inside the transaction so that its failure rolls the row back. A keyring that
        # prompts to unlock keeps the write lock meanwhile; other writers wait up to SQLITE_BUSY_TIMEOUT_MS.
        with write_transaction(self._db):
            config_id = LLMConfig.insert(
                provider=provider,
                model=model,
                base_url=base_url,
                has_api_key=key is not None,
                created_at=now,
                updated_at=now,
            ).execute(self._db)
            if key is not None:
                store_api_key(config_id, key)
        log.info("Saved LLM config %s (%s, %s)", config_id, provider, model)
        return int(config_id)

    def update_config(
        self,
        config_id: int,
        *,
        provider: str | None = None,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        """Change the given fields (None leaves one unchanged). ``base_url=""`` removes the URL and
        ``api_key=""`` removes the key; the result is validated as a whole."""
        key = _cleaned_key(api_key)
        if key is not None:
            check_keyring_available()
        with write_transaction(self._db):
            row = self._row(config_id)
            new_provider, new_model, new_base_url = _validated(
                row.provider if provider is None else provider,
                row.model if model is None else model,
                row.base_url if base_url is None else base_url,
            )
            values: dict[str, Any] = {
                "provider": new_provider,
                "model": new_model,
                "base_url": new_base_url,
                "updated_at": utc_now(),
            }
            if api_key is not None:
                values["has_api_key"] = key is not None
            LLMConfig.update(**values).where(LLMConfig.id == config_id).execute(self._db)
            if key is not None:
                store_api_key(config_id, key)
            elif api_key is not None and row.has_api_key:
                delete_api_key(config_id)
        log.info("Updated LLM config %s", config_id)

    def set_current_config(self, config_id: int) -> None:
        with write_transaction(self._db):
            self._row(config_id)
            set_app_setting(CURRENT_CONFIG_SETTING, str(config_id), db=self._db)

    def get_current_config(self) -> LLMConfigRecord | None:
        value = get_app_setting(CURRENT_CONFIG_SETTING, db=self._db)
        if value is None:
            return None
        try:
            return self.get_config(int(value))
        except (ValueError, ConfigNotFoundError):
            log.warning("The current LLM config setting %r names no configuration; ignoring it", value)
            return None

    def get_config(self, config_id: int) -> LLMConfigRecord:
        return _record(self._row(config_id))

    def list_configs(self) -> list[LLMConfigRecord]:
        return [_record(row) for row in LLMConfig.select().order_by(LLMConfig.id).execute(self._db)]

    def delete_config(self, config_id: int) -> None:
        """Delete the configuration and its keyring entry; if it was the current one, there is none afterwards.
        If the keyring fails, nothing is deleted (so the key is not orphaned) and the error propagates."""
        with write_transaction(self._db):
            row = self._row(config_id)
            LLMConfig.delete().where(LLMConfig.id == config_id).execute(self._db)
            if get_app_setting(CURRENT_CONFIG_SETTING, db=self._db) == str(config_id):
                set_app_setting(CURRENT_CONFIG_SETTING, None, db=self._db)
            if row.has_api_key:
                delete_api_key(config_id)
        log.info("Deleted LLM config %s", config_id)

    def get_api_key(self, config_id: int) -> str | None:
        """The key for this configuration: from the keyring if one was saved, else HEARTH_API_KEY (or None).

        HEARTH_API_KEY also stands in when a saved key cannot be read because the keyring is unavailable."""
        row = self._row(config_id)
        override = get_settings().api_key_override
        if not row.has_api_key:
            return override
        try:
            key = load_api_key(config_id)
        except KeyringUnavailableError:
            if override is not None:
                log.info("Keyring unavailable; using HEARTH_API_KEY for LLM config %s", config_id)
                return override
            raise
        if key is None:
            log.warning("The API key of LLM config %s is missing from the keyring", config_id)
            return override
        return key

    def _row(self, config_id: int) -> LLMConfig:
        row = next(iter(LLMConfig.select().where(LLMConfig.id == config_id).limit(1).execute(self._db)), None)
        if row is None:
            raise ConfigNotFoundError(config_id)
        return row
