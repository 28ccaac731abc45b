"""Build the ``ChatModel`` for an LLM configuration: the local engine or an OpenAI-compatible server.

Consumers (chat, workflows, server) ask this module for a model and then only use the ``ChatModel`` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from src.db.llm_config_db import PROVIDERS, LLMConfigDB, LLMConfigRecord
from src.errors import ConfigError, UnknownProviderError
from src.settings import DEFAULT_LOCAL_MODEL
from src.utils.generation import ChatMessage, ChatModel, GenerationParams, TextStream

if TYPE_CHECKING:
    from src.utils.LocalLLMEngine import LocalLLMEngine

PROVIDER_LOCAL = "local_model"
PROVIDER_OPENAI_COMPATIBLE = "openai_compatible"
assert set(PROVIDERS) == {PROVIDER_LOCAL, PROVIDER_OPENAI_COMPATIBLE}


class LocalModelProvider:
    """A local model (catalog id, folder name or path) served by the shared ``LocalLLMEngine``."""

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, engine: "LocalLLMEngine | None" = None) -> None:
        from src.utils.LocalLLMEngine import LocalLLMEngine

        self._model = model
        self._engine = engine or LocalLLMEngine.shared()

    @property
    def model_name(self) -> str:
        return self._model

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams) -> TextStream:
        return self._engine.stream(messages, params, model=self._model)


def build_chat_model(
    config: LLMConfigRecord | None,
    *,
    config_db: LLMConfigDB | None = None,
    engine: "LocalLLMEngine | None" = None,
    model_override: str | None = None,
) -> ChatModel:
    """The model for ``config``; with no configuration at all, the embedded local model (works out of the box)."""
    if config is None or config.provider == PROVIDER_LOCAL:
        model = model_override or (config.model if config else DEFAULT_LOCAL_MODEL)
        return LocalModelProvider(model, engine)
    if config.provider == PROVIDER_OPENAI_COMPATIBLE:
        from src.utils.openai_compatible import OpenAICompatibleProvider

        if not config.base_url:
            raise ConfigError(f"LLM configuration {config.id} has no server URL.")
        api_key = (config_db or LLMConfigDB()).get_api_key(config.id)
        return OpenAICompatibleProvider(config.base_url, model_override or config.model, api_key)
    raise UnknownProviderError(config.provider, list(PROVIDERS))
