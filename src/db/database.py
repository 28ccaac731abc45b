"""The SQLite database: one file at ``get_settings().db_path``, opened once per path and migrated on first open.

Models bind to ``database_proxy``; ``get_database()`` points it at the database of the current settings, so a test
that reloads settings with another path gets a fresh database and the models follow. The stores in this package
also run every query against the database they were given, so they never depend on where the proxy points.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee

from src import settings as _settings
from src.db.migrations import migrate
from src.db.models import AppSetting, database_proxy
from src.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_databases: dict[Path, peewee.SqliteDatabase] = {}


def _pragmas() -> list[tuple[str, object]]:
    # Set on every new connection. journal_mode is not among them: WAL is a property of the file (see _enable_wal).
    return [
        ("busy_timeout", _settings.SQLITE_BUSY_TIMEOUT_MS),
        ("foreign_keys", 1),
        # In WAL mode NORMAL is still crash-safe for the database; only the last commits can roll back on power loss.
        ("synchronous", "normal"),
    ]


def _enable_wal(path: Path) -> None:
    """Switch the file to WAL journaling, which then persists for every later connection.

    When two processes create the database at the same moment, the loser's ``PRAGMA journal_mode=wal`` fails with
    "database is locked" immediately, without waiting for busy_timeout (about one in seven simultaneous first
    opens in tests/test_db.py's race test). So this retries for up to SQLITE_BUSY_TIMEOUT_MS.
    """
    deadline = time.monotonic() + _settings.SQLITE_BUSY_TIMEOUT_MS / 1000
    conn = sqlite3.connect(str(path), timeout=_settings.SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = wal").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
    finally:
        conn.close()
    if str(mode).lower() != "wal":
        # E.g. some network file systems; everything still works, only readers and writers block each other more.
        log.warning("SQLite could not use WAL journaling for %s (mode is %s)", path, mode)


def open_database(path: Path) -> peewee.SqliteDatabase:
    """A new, unmigrated handle on the SQLite file at ``path`` with Hearth's pragmas. Prefer ``get_database()``.

    A folder made here is the user's alone (0700) and so is the database (0600; SQLite gives its -wal and -shm files
    the same mode): chats are private, also from other users of the machine."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _enable_wal(path)
    # thread_safe (the default) gives every thread its own connection, opened on first use.
    return peewee.SqliteDatabase(
        str(path), pragmas=_pragmas(), timeout=_settings.SQLITE_BUSY_TIMEOUT_MS / 1000, thread_safe=True
    )


def get_database() -> peewee.SqliteDatabase:
    """The migrated database of the current settings, usable from any thread."""
    path = get_settings().db_path.absolute()
    with _lock:
        db = _databases.get(path)
        if db is None:
            db = open_database(path)
            applied = migrate(db)
            if applied:
                log.info("Database %s migrated: %s", path, ", ".join(applied))
            _databases[path] = db
        if database_proxy.obj is not db:
            database_proxy.initialize(db)
        return db


@contextmanager
def write_transaction(db: peewee.Database | None = None) -> Iterator[peewee.Database]:
    """A write transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``).

    A plain ``BEGIN`` starts as a reader and upgrades on its first write; in WAL mode that upgrade fails at once
    with "database is locked" when another connection wrote meanwhile, without waiting for busy_timeout.
    Taking the lock at BEGIN makes concurrent writers queue on busy_timeout instead. Nested inside another
    transaction this becomes a savepoint, so the outer transaction should be a ``write_transaction`` too.
    """
    if db is None:
        db = get_database()
    with db.atomic(lock_type="IMMEDIATE"):
        yield db


def get_app_setting(key: str, default: str | None = None, *, db: peewee.Database | None = None) -> str | None:
    if db is None:
        db = get_database()
    value = AppSetting.select(AppSetting.value).where(AppSetting.key == key).scalar(db)
    return default if value is None else value


def set_app_setting(key: str, value: str | None, *, db: peewee.Database | None = None) -> None:
    """Store ``value`` under ``key``; ``None`` removes the key."""
    with write_transaction(db) as db:
        if value is None:
            AppSetting.delete().where(AppSetting.key == key).execute(db)
        else:
            AppSetting.insert(key=key, value=value).on_conflict_replace().execute(db)
