"""Versioned schema migrations, in the spirit of simonw/llm's ``migrations.py``.

Every schema change, from the first release on, is a function registered with ``@migration`` (in the order they
appear in this file, which is the order they run); the names of those applied are recorded in
``_hearth_migrations``. A migration is never edited once released: a change is a new function at the end. Each
pending migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its record, so a crash leaves it either fully applied or not at all, and two processes opening a fresh database at
once serialise on SQLite's write lock: the second one finds the migration recorded and skips it.

The SQL is written out here rather than generated from the model classes: the models describe the *current*
schema, a migration must keep creating the schema of *its* release forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import peewee

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "_hearth_migrations"

Migration = Callable[[peewee.SqliteDatabase], None]

# Filled by @migration, in the order of definition. The function's name is what gets recorded: never rename one.
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register ``function`` as the next migration (as simonw/llm's ``@migration``)."""
    if any(known.__name__ == function.__name__ for known in MIGRATIONS):
        raise ValueError(f"two migrations are named {function.__name__}")
    MIGRATIONS.append(function)
    return function


def _execute_script(db: peewee.SqliteDatabase, statements: tuple[str, ...]) -> None:
    # One statement at a time through peewee (not executescript), so everything stays inside our transaction.
    for statement in statements:
        db.execute_sql(statement)


_M001_STATEMENTS = (
    # AUTOINCREMENT so that a deleted config's id is never reused: a stale keyring entry or a stale
    # "current_llm_config_id" setting can then never attach itself to a different, newer config.
    """
    CREATE TABLE llm_config (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        base_url TEXT,
        has_api_key INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE chat (
        id TEXT NOT NULL PRIMARY KEY,
        title TEXT,
        model TEXT,
        system_prompt TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX chat_updated_at ON chat (updated_at)",
    # No CHECK on role: SQLite cannot alter a CHECK constraint without rebuilding the table, and new roles
    # (e.g. "tool") are likely; ChatStore validates roles instead.
    """
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        chat_id TEXT NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
        parent_id INTEGER REFERENCES message (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        model TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        time_to_first_token_s REAL,
        tokens_per_s REAL,
        finish_reason TEXT,
        dropped_messages INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX message_chat_id ON message (chat_id)",
    # Without this index every cascade from a deleted message would scan the whole table for its children.
    "CREATE INDEX message_parent_id ON message (parent_id)",
    """
    CREATE TABLE app_setting (
        key TEXT NOT NULL PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
)


@migration
def m001_initial(db: peewee.SqliteDatabase) -> None:
    _execute_script(db, _M001_STATEMENTS)


@migration
def m002_user_models(db: peewee.SqliteDatabase) -> None:
    _execute_script(
        db,
        (
            """
            CREATE TABLE user_model (
                id TEXT NOT NULL PRIMARY KEY,
                repo TEXT NOT NULL,
                revision TEXT NOT NULL,
                added_at TEXT NOT NULL
            )
            """,
        ),
    )


def applied_migrations(db: peewee.SqliteDatabase) -> list[str]:
    """Names of the migrations recorded in ``db``, in the order they were applied."""
    if not db.table_exists(MIGRATIONS_TABLE):
        return []
    cursor = db.execute_sql(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY rowid")
    return [name for (name,) in cursor.fetchall()]


def migrate(db: peewee.SqliteDatabase) -> list[str]:
    """Apply the pending migrations; return the names of those this call applied (``[]`` when up to date)."""
    known = [step.__name__ for step in MIGRATIONS]
    applied = set(applied_migrations(db))
    unknown = applied.difference(known)
    if unknown:
        # A newer Hearth wrote this database. Carry on: migrations only add, so old code mostly still works.
        log.warning("The database has migrations this version does not know: %s", ", ".join(sorted(unknown)))
    pending = [step for step in MIGRATIONS if step.__name__ not in applied]
    if not pending:
        return []

    with db.atomic(lock_type="IMMEDIATE"):
        db.execute_sql(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (name TEXT NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    done: list[str] = []
    for step in pending:
        name = step.__name__
        with db.atomic(lock_type="IMMEDIATE"):
            # Checked again under the write lock: another process may have applied it since we looked.
            already = db.execute_sql(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = ?", (name,)).fetchone()
            if already:
                continue
            log.info("Applying database migration %s", name)
            step(db)
            db.execute_sql(
                f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                (name, datetime.now(UTC).isoformat(timespec="microseconds")),
            )
        done.append(name)
    return done
