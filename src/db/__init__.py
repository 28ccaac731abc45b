"""The database layer: peewee models on one SQLite file, versioned migrations, chats, LLM configs, API keys.

Nothing here imports from ``utils``, ``workflows`` or ``ui``; they build on it.
"""

from src.db.chats import CURRENT_LEAF, ChatStore, StoredChat, StoredMessage
from src.db.database import get_app_setting, get_database, set_app_setting, write_transaction
from src.db.llm_config_db import PROVIDERS, LLMConfigDB, LLMConfigRecord
from src.db.migrations import applied_migrations

__all__ = [
    "CURRENT_LEAF",
    "PROVIDERS",
    "ChatStore",
    "LLMConfigDB",
    "LLMConfigRecord",
    "StoredChat",
    "StoredMessage",
    "applied_migrations",
    "get_app_setting",
    "get_database",
    "set_app_setting",
    "write_transaction",
]
