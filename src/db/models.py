"""Peewee models of the current schema. The tables themselves are created by ``migrations.py``.

When a model changes, add a migration that makes the same change; ``tests/test_db.py`` checks that the migrated
columns and the models agree.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import peewee

# Bound to the real database by ``database.get_database()``.
database_proxy = peewee.DatabaseProxy()

_clock_lock = threading.Lock()
_last_now = datetime.min.replace(tzinfo=timezone.utc)


def utc_now() -> datetime:
    """The current time in UTC, strictly increasing within this process.

    Lists are ordered by these timestamps, so two writes must never share one, even where the clock is coarse
    (about 15 ms on some Windows builds) or steps back.
    """
    global _last_now
    with _clock_lock:
        now = datetime.now(timezone.utc)
        if now <= _last_now:
            now = _last_now + timedelta(microseconds=1)
        _last_now = now
        return now


class UTCDateTimeField(peewee.Field):
    """A timezone-aware datetime stored as fixed-width ISO 8601 text in UTC.

    Peewee's DateTimeField cannot parse back the offset of an aware datetime. Fixed width (always microseconds,
    always +00:00) keeps text order equal to time order, so ORDER BY and comparisons work on the column.
    """

    field_type = "TEXT"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{self.name} needs a timezone-aware datetime, got {value!r}")
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")

    def python_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        parsed = datetime.fromisoformat(value)
        # Every value Hearth writes has an offset; treat anything else as UTC rather than as local time.
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy


class LLMConfig(BaseModel):
    """A language model configuration. The API key lives in the OS keyring; ``has_api_key`` only says it exists."""

    id = peewee.AutoField()
    provider = peewee.TextField()
    model = peewee.TextField()
    base_url = peewee.TextField(null=True)
    has_api_key = peewee.BooleanField(default=False)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()

    class Meta:
        table_name = "llm_config"


class Chat(BaseModel):
    id = peewee.TextField(primary_key=True)
    title = peewee.TextField(null=True)
    model = peewee.TextField(null=True)
    system_prompt = peewee.TextField(null=True)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField(index=True)

    class Meta:
        table_name = "chat"


class Message(BaseModel):
    """One message. Regenerating or editing adds a sibling under the same parent, so older versions stay."""

    id = peewee.AutoField()
    chat = peewee.ForeignKeyField(Chat, backref="messages", on_delete="CASCADE", index=True, column_name="chat_id")
    parent = peewee.ForeignKeyField(
        "self", null=True, backref="children", on_delete="CASCADE", index=True, column_name="parent_id"
    )
    role = peewee.TextField()
    content = peewee.TextField()
    model = peewee.TextField(null=True)
    prompt_tokens = peewee.IntegerField(null=True)
    completion_tokens = peewee.IntegerField(null=True)
    time_to_first_token_s = peewee.FloatField(null=True)
    tokens_per_s = peewee.FloatField(null=True)
    finish_reason = peewee.TextField(null=True)
    # How many old messages were left out of the prompt so that it fit the model's context.
    dropped_messages = peewee.IntegerField(default=0)
    created_at = UTCDateTimeField()

    class Meta:
        table_name = "message"


class AppSetting(BaseModel):
    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "app_setting"


class UserModel(BaseModel):
    """A Hub repository the user added to the model catalog (the built-in entries live in code)."""

    id = peewee.TextField(primary_key=True)
    repo = peewee.TextField()
    revision = peewee.TextField()
    added_at = UTCDateTimeField()

    class Meta:
        table_name = "user_model"


MODELS: tuple[type[BaseModel], ...] = (LLMConfig, Chat, Message, AppSetting, UserModel)
