"""The Python API for chatting with history: ``AIRequestHandlerWithHistory``.

    from src.utils.ChatUtils import AIRequestHandlerWithHistory
    handler = AIRequestHandlerWithHistory()
    print(handler.get_single_response("my_chat", "Hello!"))

Conversations live in SQLite, so a new handler (or a new process) continues where the last one stopped. The model
comes from the current LLM configuration (``LLMConfigDB``); with none, the embedded local model is used.

What is saved when: the user's message is written once the model has accepted the request (so bad input, an
unknown or missing model, or a too-long message write nothing). The reply is written when it ends, also when it
is stopped (the partial text, finish reason "cancelled") or fails midway (the partial text, finish reason
"error"); a request that fails before any text leaves the user's message without a reply, to be retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from src.db.chats import ChatStore, StoredMessage
from src.db.llm_config_db import LLMConfigDB, LLMConfigRecord
from src.errors import EmptyMessageError, NothingToRegenerateError
from src.settings import get_settings
from src.utils.generation import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    ChatMessage,
    ChatModel,
    GenerationParams,
    GenerationResult,
    TextStream,
)
from src.utils.providers import build_chat_model

if TYPE_CHECKING:
    from src.utils.LocalLLMEngine import LocalLLMEngine

logger = logging.getLogger(__name__)


class ChatReply(TextStream):
    """A streamed reply that is saved to the chat's history when it ends. ``message_id`` is set once saved."""

    message_id: int | None = None
    user_message_id: int | None = None


class AIRequestHandlerWithHistory:
    def __init__(
        self,
        *,
        config_db: LLMConfigDB | None = None,
        chat_store: ChatStore | None = None,
        engine: "LocalLLMEngine | None" = None,
        params: GenerationParams | None = None,
    ) -> None:
        self.config_db = config_db or LLMConfigDB()
        self.chats = chat_store or ChatStore()
        self._engine = engine
        self.params = params or GenerationParams(max_new_tokens=get_settings().max_new_tokens)
        self.config: LLMConfigRecord | None = None
        self.model: ChatModel
        self.refresh_config()

    def refresh_config(self, model_override: str | None = None) -> None:
        """Pick up the current LLM configuration (call after ``LLMConfigDB.set_current_config``).

        Cheap: a local model is loaded on first use, not here."""
        self.config = self.config_db.get_current_config()
        self.model = build_chat_model(
            self.config, config_db=self.config_db, engine=self._engine, model_override=model_override
        )

    # --- sending ----------------------------------------------------------------------------------------------

    def get_streaming_response(self, chat_id: str, text: str, **params: Any) -> ChatReply:
        """Send ``text`` in chat ``chat_id`` and return the reply as an iterator of text pieces.

        ``params`` are sampling parameters (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed,
        stop). Call ``cancel()`` on the reply to stop it; the partial reply is kept."""
        if not isinstance(text, str) or not text.strip():
            raise EmptyMessageError()
        generation_params = self.params.updated(**params)
        history = self._prompt_messages(chat_id, self.chats.current_path(chat_id))
        model_stream = self.model.stream([*history, ChatMessage("user", text)], generation_params)
        self.chats.get_or_create_chat(chat_id, model=self.model.model_name)
        user_message = self.chats.add_message(chat_id, "user", text)
        return self._reply(model_stream, user_message)

    def regenerate_streaming_response(self, chat_id: str, **params: Any) -> ChatReply:
        """Answer the conversation's last user message again. The new reply becomes the current one; the older
        version stays in the database as its sibling."""
        generation_params = self.params.updated(**params)
        path = self.chats.current_path(chat_id)
        last_user = max((i for i, m in enumerate(path) if m.role == "user"), default=None)
        if last_user is None:
            raise NothingToRegenerateError()
        history = self._prompt_messages(chat_id, path[: last_user + 1])
        model_stream = self.model.stream(history, generation_params)
        return self._reply(model_stream, path[last_user])

    def _prompt_messages(self, chat_id: str, path: list[StoredMessage]) -> list[ChatMessage]:
        chat = self.chats.get_chat(chat_id)
        messages = [ChatMessage(m.role, m.content) for m in path if m.content]
        if chat is not None and chat.system_prompt:
            messages.insert(0, ChatMessage("system", chat.system_prompt))
        return messages

    def _reply(self, model_stream: TextStream, user_message: StoredMessage) -> ChatReply:
        reply = ChatReply()
        reply.user_message_id = user_message.id
        reply.on_cancel(model_stream.cancel)
        return reply.start(self._save_when_done(reply, model_stream, user_message))

    def get_single_response(self, chat_id: str, text: str, **params: Any) -> str:
        """Send ``text`` and return the whole reply (saved to the history)."""
        return self.get_streaming_response(chat_id, text, **params).collect().text

    def _save_when_done(self, reply: ChatReply, model_stream: TextStream, user_message: StoredMessage) -> Iterator[str]:
        failed = True
        try:
            yield from model_stream
            failed = False
        finally:
            if model_stream.result is None:  # we stopped reading before the model ended: stop the model too
                model_stream.close()
            result = model_stream.result or GenerationResult(
                text=model_stream.text, model=self.model.model_name, finish_reason=FINISH_ERROR
            )
            if failed and result.finish_reason not in (FINISH_CANCELLED, FINISH_ERROR):
                result.finish_reason = FINISH_CANCELLED if reply.cancelled.is_set() else FINISH_ERROR
            reply.result = result
            if result.text:
                saved = self.chats.add_message(
                    user_message.chat_id,
                    "assistant",
                    result.text,
                    parent_id=user_message.id,
                    model=result.model,
                    prompt_tokens=result.stats.prompt_tokens,
                    completion_tokens=result.stats.completion_tokens,
                    time_to_first_token_s=result.stats.time_to_first_token_s,
                    tokens_per_s=result.stats.tokens_per_s,
                    finish_reason=result.finish_reason,
                    dropped_messages=result.dropped_messages,
                )
                reply.message_id = saved.id

    # --- history ----------------------------------------------------------------------------------------------

    def get_history(self, chat_id: str) -> list[dict[str, Any]]:
        """The conversation as OpenAI-style dicts (role, content) with metadata (id, model, created_at, stats)."""
        return [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "model": m.model,
                "created_at": m.created_at.isoformat(),
                "finish_reason": m.finish_reason,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "tokens_per_s": m.tokens_per_s,
            }
            for m in self.chats.current_path(chat_id)
        ]

    def clear_history(self, chat_id: str) -> int:
        """Delete the chat's messages (the chat itself and its system prompt stay). Returns how many."""
        return self.chats.clear_history(chat_id)
