"""Chats and their messages, as a thin store that hands out frozen value objects (never peewee rows).

Messages form a tree per chat: each one points at its parent, and regenerating or editing adds a sibling under
the same parent instead of overwriting. The conversation shown is the path from the root to the most recently
created message (the "leaf"), so older versions drop out of it but are kept.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import peewee

from src.db.database import get_database, write_transaction
from src.db.models import Chat, Message, utc_now
from src.errors import ChatNotFoundError, InvalidParameterError, MessageNotFoundError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TITLE_MAX_CHARS = 60

# Fields a caller may change after a message is written (e.g. to finalise a streamed reply). Role, chat and parent
# are fixed: changing them would silently rewrite the conversation's shape.
UPDATABLE_MESSAGE_FIELDS = frozenset(
    {
        "content",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "time_to_first_token_s",
        "tokens_per_s",
        "finish_reason",
        "dropped_messages",
    }
)


class _Leaf(enum.Enum):
    CURRENT = "current leaf"


# Default parent of add_message: the chat's current leaf. A sentinel because None already means "a root message".
CURRENT_LEAF: Final = _Leaf.CURRENT


@dataclass(frozen=True)
class StoredChat:
    id: str
    title: str | None
    model: str | None
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredMessage:
    id: int
    chat_id: str
    role: str
    content: str
    model: str | None
    parent_id: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    finish_reason: str | None
    dropped_messages: int
    created_at: datetime


def _stored_chat(row: Chat) -> StoredChat:
    return StoredChat(
        id=row.id,
        title=row.title,
        model=row.model,
        system_prompt=row.system_prompt,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _stored_message(row: Message) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        chat_id=row.chat_id,
        role=row.role,
        content=row.content,
        model=row.model,
        parent_id=row.parent_id,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        time_to_first_token_s=row.time_to_first_token_s,
        tokens_per_s=row.tokens_per_s,
        finish_reason=row.finish_reason,
        dropped_messages=row.dropped_messages,
        created_at=row.created_at,
    )


def title_from_content(content: str) -> str | None:
    """A chat title from a message: its first non-blank line, whitespace collapsed, at most TITLE_MAX_CHARS."""
    for line in content.splitlines():
        title = " ".join(line.split())
        if title:
            if len(title) > TITLE_MAX_CHARS:
                title = title[: TITLE_MAX_CHARS - 1].rstrip() + "…"
            return title
    return None


def _like_contains(field: peewee.Field, text: str) -> peewee.Node:
    # Escape LIKE's wildcards so that "50%" or "snake_case" match literally. SQLite's LIKE ignores case for
    # ASCII letters only; other scripts match case-sensitively (Chinese has no case, so zh users lose nothing).
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return peewee.NodeList((field, peewee.SQL("LIKE"), peewee.Value(f"%{escaped}%"), peewee.SQL("ESCAPE '\\'")))


def _check_chat_id(chat_id: str) -> None:
    if not isinstance(chat_id, str) or not chat_id.strip():
        raise InvalidParameterError(f"A chat id must be a non-empty string, got {chat_id!r}.")


def _check_message_fields(fields: dict[str, Any]) -> None:
    if "content" in fields and not isinstance(fields["content"], str):
        raise InvalidParameterError(f"Message content must be text, got {type(fields['content']).__name__}.")
    dropped = fields.get("dropped_messages", 0)
    if not isinstance(dropped, int) or dropped < 0:
        raise InvalidParameterError(f"dropped_messages must be a non-negative integer, got {dropped!r}.")
    for name in ("prompt_tokens", "completion_tokens"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidParameterError(f"{name} must be a non-negative integer or None, got {value!r}.")


class ChatStore:
    """Chats and messages in the database. Every write runs in one ``write_transaction``.

    ``updated_at`` is the time of the last conversation activity (a message added, changed or cleared), so
    renaming a chat or changing its settings does not move it in ``list_chats()``.
    """

    def __init__(self, db: peewee.Database | None = None) -> None:
        # Queries run against this database explicitly (``execute(self._db)``), not through the models' proxy,
        # so a store keeps working on its own database even after settings point elsewhere.
        self._db = db if db is not None else get_database()

    @staticmethod
    def new_chat_id() -> str:
        return uuid.uuid4().hex

    # --- chats ---------------------------------------------------------------------------------------------------

    def get_or_create_chat(self, chat_id: str, *, model: str | None = None, title: str | None = None) -> StoredChat:
        """The chat with this id, created with ``model`` and ``title`` if missing (an existing chat is unchanged)."""
        _check_chat_id(chat_id)
        with write_transaction(self._db):
            return _stored_chat(self._ensure_chat(chat_id, model=model, title=title))

    def get_chat(self, chat_id: str) -> StoredChat | None:
        row = self._chat_row(chat_id)
        return None if row is None else _stored_chat(row)

    def list_chats(self) -> list[StoredChat]:
        """All chats, most recently updated first."""
        query = Chat.select().order_by(Chat.updated_at.desc(), Chat.created_at.desc())
        return [_stored_chat(row) for row in query.execute(self._db)]

    def rename_chat(self, chat_id: str, title: str | None) -> None:
        """Set the title; a blank title clears it (the next first user message does not set it again)."""
        cleaned = title.strip() if title else None
        self._update_chat(chat_id, title=cleaned or None)

    def set_system_prompt(self, chat_id: str, prompt: str | None) -> None:
        """Set the chat's system prompt; None or a blank prompt removes it."""
        self._update_chat(chat_id, system_prompt=prompt if prompt and prompt.strip() else None)

    def set_chat_model(self, chat_id: str, model: str | None) -> None:
        self._update_chat(chat_id, model=model.strip() if model and model.strip() else None)

    def delete_chat(self, chat_id: str) -> bool:
        """Delete the chat and (by ON DELETE CASCADE) its messages. Returns False if there was no such chat."""
        with write_transaction(self._db):
            deleted = Chat.delete().where(Chat.id == chat_id).execute(self._db)
        return bool(deleted)

    # --- messages ------------------------------------------------------------------------------------------------

    def add_message(
        self,
        chat_id: str,
        role: str,
        content: str,
        *,
        parent_id: int | None | Literal[_Leaf.CURRENT] = CURRENT_LEAF,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        time_to_first_token_s: float | None = None,
        tokens_per_s: float | None = None,
        finish_reason: str | None = None,
        dropped_messages: int = 0,
    ) -> StoredMessage:
        """Add a message, creating the chat if it does not exist yet.

        ``parent_id`` defaults to the chat's current leaf; pass None for a root message, or the id of an earlier
        message to branch (regenerate = a new assistant message under the same user message). The first user
        message of an untitled chat gives it its title.
        """
        _check_chat_id(chat_id)
        if role not in ROLES:
            raise InvalidParameterError(f"Unknown message role {role!r}; expected one of {', '.join(ROLES)}.")
        _check_message_fields(
            {
                "content": content,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "dropped_messages": dropped_messages,
            }
        )
        with write_transaction(self._db):
            chat = self._ensure_chat(chat_id)
            if parent_id is CURRENT_LEAF:
                parent = self._leaf_id(chat_id)
            elif parent_id is None:
                parent = None
            else:
                parent = self._check_parent(chat_id, parent_id)
            now = utc_now()
            message_id = Message.insert(
                chat=chat_id,
                parent=parent,
                role=role,
                content=content,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                time_to_first_token_s=time_to_first_token_s,
                tokens_per_s=tokens_per_s,
                finish_reason=finish_reason,
                dropped_messages=dropped_messages,
                created_at=now,
            ).execute(self._db)
            changes: dict[peewee.Field, Any] = {Chat.updated_at: now}
            if role == "user" and not (chat.title or "").strip():
                title = title_from_content(content)
                if title:
                    changes[Chat.title] = title
            Chat.update(changes).where(Chat.id == chat_id).execute(self._db)
            return _stored_message(self._message_row(message_id))

    def update_message(self, message_id: int, **fields: Any) -> StoredMessage:
        """Change some of a message's fields (see UPDATABLE_MESSAGE_FIELDS) and return the updated message."""
        unknown = set(fields) - UPDATABLE_MESSAGE_FIELDS
        if unknown:
            raise TypeError(f"update_message() cannot change: {', '.join(sorted(unknown))}")
        _check_message_fields(fields)
        with write_transaction(self._db):
            row = self._message_row(message_id)
            if fields:
                Message.update(**fields).where(Message.id == message_id).execute(self._db)
                Chat.update(updated_at=utc_now()).where(Chat.id == row.chat_id).execute(self._db)
                row = self._message_row(message_id)
            return _stored_message(row)

    def current_path(self, chat_id: str) -> list[StoredMessage]:
        """The conversation as shown: root to the most recently created message, without older versions."""
        query = Message.select().where(Message.chat == chat_id).order_by(Message.id)
        rows = {row.id: row for row in query.execute(self._db)}
        if not rows:
            return []
        # Ids grow with insertion order (the write lock serialises inserts), and a parent always exists before
        # its children, so the highest id is the newest leaf and following parents always terminates.
        path: list[StoredMessage] = []
        current: Message | None = rows[max(rows)]
        while current is not None:
            path.append(_stored_message(current))
            current = rows.get(current.parent_id) if current.parent_id is not None else None
        path.reverse()
        return path

    def clear_history(self, chat_id: str) -> int:
        """Delete all of the chat's messages but keep the chat (title, model, system prompt). Returns the count."""
        with write_transaction(self._db):
            # Counted first: deleting a root cascades to its replies, which SQLite leaves out of the rowcount.
            deleted = Message.select().where(Message.chat == chat_id).count(self._db)
            if deleted:
                Message.delete().where(Message.chat == chat_id).execute(self._db)
                Chat.update(updated_at=utc_now()).where(Chat.id == chat_id).execute(self._db)
        return int(deleted)

    def search(self, text: str) -> list[StoredChat]:
        """Chats whose title or any message contains ``text`` (case-insensitive for ASCII), most recent first."""
        if not text.strip():
            return self.list_chats()
        has_message = Message.select(peewee.SQL("1")).where(
            (Message.chat == Chat.id) & _like_contains(Message.content, text)
        )
        query = (
            Chat.select()
            .where(_like_contains(Chat.title, text) | peewee.fn.EXISTS(has_message))
            .order_by(Chat.updated_at.desc(), Chat.created_at.desc())
        )
        return [_stored_chat(row) for row in query.execute(self._db)]

    # --- internals -----------------------------------------------------------------------------------------------

    def _chat_row(self, chat_id: str) -> Chat | None:
        return next(iter(Chat.select().where(Chat.id == chat_id).limit(1).execute(self._db)), None)

    def _message_row(self, message_id: int) -> Message:
        row = next(iter(Message.select().where(Message.id == message_id).limit(1).execute(self._db)), None)
        if row is None:
            raise MessageNotFoundError(message_id)
        return row

    def _ensure_chat(self, chat_id: str, *, model: str | None = None, title: str | None = None) -> Chat:
        # Callers hold a write transaction, so nobody can create the same chat between the check and the insert.
        row = self._chat_row(chat_id)
        if row is None:
            now = utc_now()
            Chat.insert(id=chat_id, title=title, model=model, created_at=now, updated_at=now).execute(self._db)
            log.debug("Created chat %s", chat_id)
            row = self._chat_row(chat_id)
            assert row is not None
        return row

    def _leaf_id(self, chat_id: str) -> int | None:
        return Message.select(peewee.fn.MAX(Message.id)).where(Message.chat == chat_id).scalar(self._db)

    def _check_parent(self, chat_id: str, parent_id: int) -> int:
        parent_chat = Message.select(Message.chat).where(Message.id == parent_id).scalar(self._db)
        if parent_chat is None:
            raise MessageNotFoundError(parent_id)
        if parent_chat != chat_id:
            raise InvalidParameterError(f"Message {parent_id} belongs to another chat, not to {chat_id!r}.")
        return parent_id

    def _update_chat(self, chat_id: str, **values: Any) -> None:
        with write_transaction(self._db):
            if not Chat.update(**values).where(Chat.id == chat_id).execute(self._db):
                raise ChatNotFoundError(chat_id)
