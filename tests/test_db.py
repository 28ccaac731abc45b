"""The database layer: migrations, pragmas, concurrency, ChatStore and app settings, on real SQLite files."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import peewee
import pytest

from src import settings as hearth_settings
from src.db import ChatStore, applied_migrations, get_app_setting, get_database, set_app_setting, write_transaction
from src.db.chats import TITLE_MAX_CHARS
from src.db.database import open_database
from src.db.migrations import MIGRATIONS, MIGRATIONS_TABLE, migrate
from src.db.models import MODELS, UTCDateTimeField, database_proxy
from src.errors import ChatNotFoundError, InvalidParameterError, MessageNotFoundError

ALL_MIGRATIONS = [m.__name__ for m in MIGRATIONS]
from src.settings import ENV_DATA_DIR, get_settings, reload_settings


def _count(db: peewee.Database, table: str) -> int:
    return db.execute_sql(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _point_data_dir(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(path))
    reload_settings()


# --- migrations and pragmas ----------------------------------------------------------------------------------------


def test_migrations_applied_once_and_recorded() -> None:
    db = get_database()
    assert applied_migrations(db) == ["m001_initial", "m002_user_models"] == [m.__name__ for m in MIGRATIONS]
    assert _count(db, MIGRATIONS_TABLE) == len(MIGRATIONS)
    assert {"llm_config", "chat", "message", "app_setting"} <= set(db.get_tables())


def test_reopening_is_a_noop() -> None:
    db = get_database()
    before = db.execute_sql(f"SELECT name, applied_at FROM {MIGRATIONS_TABLE}").fetchall()

    fresh = open_database(get_settings().db_path)
    assert migrate(fresh) == []
    assert fresh.execute_sql(f"SELECT name, applied_at FROM {MIGRATIONS_TABLE}").fetchall() == before
    assert get_database() is db  # cached per path
    fresh.close()


@pytest.mark.timeout(120)
def test_two_processes_opening_a_fresh_database_migrate_it_once(tmp_path: Path) -> None:
    # Two independent handles (separate connections, as two processes would have) race on a new file. The race
    # is lost only now and then (switching a new file to WAL used to fail ~1 in 7), so it is run many times.
    for attempt in range(25):
        path = tmp_path / f"race-{attempt}.sqlite3"
        barrier = threading.Barrier(2)
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def run() -> None:
            db = None
            try:
                barrier.wait()
                db = open_database(path)
                results.append(migrate(db))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
            finally:
                if db is not None:
                    db.close()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == [], f"attempt {attempt}"
        # Each migration is applied by exactly one of the two; which one applies which is up to the write lock
        # (one may apply m001 while the other waits, then find m001 done and apply m002).
        assert sorted(name for applied in results for name in applied) == sorted(ALL_MIGRATIONS), f"attempt {attempt}"
        check = open_database(path)
        assert applied_migrations(check) == ALL_MIGRATIONS
        assert check.pragma("journal_mode") == "wal"
        check.close()


def test_models_match_migrated_schema() -> None:
    # Guards against changing a model without adding a migration (or the reverse).
    db = get_database()
    for model in MODELS:
        table = model._meta.table_name
        columns = {column.name: column for column in db.get_columns(table)}
        assert set(columns) == set(model._meta.columns), table
        for name, field in model._meta.columns.items():
            if not field.primary_key:
                assert columns[name].null == field.null, f"{table}.{name}"
    foreign_keys = {(fk.column, fk.dest_table) for fk in db.get_foreign_keys("message")}
    assert foreign_keys == {("chat_id", "chat"), ("parent_id", "message")}


def test_wal_foreign_keys_and_busy_timeout_on_every_connection() -> None:
    db = get_database()
    seen: dict[str, tuple[object, ...]] = {}

    def read_pragmas(name: str) -> None:
        seen[name] = (db.pragma("journal_mode"), db.pragma("foreign_keys"), db.pragma("busy_timeout"))
        if name == "worker":
            db.close()  # this thread's own connection

    read_pragmas("main")
    worker = threading.Thread(target=read_pragmas, args=("worker",))
    worker.start()
    worker.join(timeout=30)
    expected = ("wal", 1, hearth_settings.SQLITE_BUSY_TIMEOUT_MS)
    assert seen == {"main": expected, "worker": expected}
    assert Path(str(get_settings().db_path) + "-wal").exists()


def test_write_transaction_begins_immediate() -> None:
    db = get_database()
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    try:
        with write_transaction(db):
            set_app_setting("probe", "1", db=db)
    finally:
        db.connection().set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[-1] == "COMMIT"


def test_write_transaction_rolls_back_on_error() -> None:
    db = get_database()
    with pytest.raises(RuntimeError):
        with write_transaction(db):
            set_app_setting("language", "zh", db=db)
            raise RuntimeError("boom")
    assert get_app_setting("language") is None


@pytest.mark.timeout(60)
def test_concurrent_writers_wait_for_the_lock_instead_of_failing() -> None:
    db = get_database()
    store = ChatStore(db)
    holding = threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with write_transaction(db):
                store.add_message("slow", "user", "held the lock")
                holding.set()
                time.sleep(0.5)  # the other thread must queue on busy_timeout meanwhile
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            holding.set()
        finally:
            db.close()

    def burst_writer(name: str) -> None:
        try:
            holding.wait(10)
            for i in range(20):
                store.add_message(name, "user", f"message {i}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=slow_writer)] + [
        threading.Thread(target=burst_writer, args=(f"burst-{n}",)) for n in range(3)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert errors == []
    assert time.monotonic() - started >= 0.5
    assert _count(db, "message") == 1 + 3 * 20
    for n in range(3):
        assert [m.content for m in store.current_path(f"burst-{n}")] == [f"message {i}" for i in range(20)]


def test_get_database_follows_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = get_database()
    ChatStore(first).add_message("only-in-first", "user", "hello")
    original_dir = get_settings().data_dir

    _point_data_dir(monkeypatch, tmp_path / "other")
    second = get_database()
    assert second is not first
    assert database_proxy.obj is second
    assert Path(second.database) == tmp_path / "other" / "hearth.sqlite3"
    assert applied_migrations(second) == ALL_MIGRATIONS
    assert ChatStore().get_chat("only-in-first") is None

    _point_data_dir(monkeypatch, original_dir)
    assert get_database() is first
    assert database_proxy.obj is first


# --- app settings ----------------------------------------------------------------------------------------------------


def test_app_settings_get_set_overwrite_delete() -> None:
    assert get_app_setting("theme") is None
    assert get_app_setting("theme", "light") == "light"
    set_app_setting("theme", "dark")
    set_app_setting("language", "zh")
    set_app_setting("theme", "system")
    assert get_app_setting("theme") == "system"
    assert get_app_setting("language") == "zh"
    set_app_setting("theme", None)
    assert get_app_setting("theme", "light") == "light"

    fresh = open_database(get_settings().db_path)
    assert get_app_setting("language", db=fresh) == "zh"
    fresh.close()


# --- ChatStore -------------------------------------------------------------------------------------------------------


def _conversation(store: ChatStore, chat_id: str = "test_chat") -> list[int]:
    ids = []
    for role, content in [("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?"), ("assistant", "Fine.")]:
        ids.append(store.add_message(chat_id, role, content, model="qwen2.5-0.5b" if role == "assistant" else None).id)
    return ids


def test_history_is_returned_in_order_with_parent_links() -> None:
    store = ChatStore()
    ids = _conversation(store)
    path = store.current_path("test_chat")
    assert [(m.role, m.content) for m in path] == [
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "How are you?"),
        ("assistant", "Fine."),
    ]
    assert [m.id for m in path] == ids
    assert [m.parent_id for m in path] == [None, *ids[:-1]]
    assert path[1].model == "qwen2.5-0.5b" and path[0].model is None
    assert all(m.chat_id == "test_chat" for m in path)
    assert store.current_path("no-such-chat") == []


def test_list_chats_most_recently_updated_first() -> None:
    store = ChatStore()
    store.get_or_create_chat("a")
    store.get_or_create_chat("b")
    store.get_or_create_chat("c")
    assert [c.id for c in store.list_chats()] == ["c", "b", "a"]
    store.add_message("a", "user", "bump")
    assert [c.id for c in store.list_chats()] == ["a", "c", "b"]
    store.rename_chat("b", "renamed")  # a label change is not activity
    assert [c.id for c in store.list_chats()] == ["a", "c", "b"]


def test_history_persists_across_a_new_store_and_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = ChatStore()
    _conversation(store)
    store.set_system_prompt("test_chat", "Be brief.")
    expected = store.current_path("test_chat")
    original_dir = get_settings().data_dir

    # A brand-new connection to the same file (as after an app restart) sees everything.
    fresh = open_database(get_settings().db_path)
    assert ChatStore(fresh).current_path("test_chat") == expected
    assert ChatStore(fresh).get_chat("test_chat").system_prompt == "Be brief."  # type: ignore[union-attr]
    fresh.close()

    _point_data_dir(monkeypatch, tmp_path / "elsewhere")
    assert ChatStore().current_path("test_chat") == []
    _point_data_dir(monkeypatch, original_dir)
    assert ChatStore().current_path("test_chat") == expected


def test_regenerated_sibling_replaces_the_old_version_in_current_path() -> None:
    store = ChatStore()
    user = store.add_message("c", "user", "Tell me a joke")
    first = store.add_message("c", "assistant", "Joke one")
    second = store.add_message("c", "assistant", "Joke two", parent_id=user.id)  # regenerate
    assert second.parent_id == user.id
    assert [m.id for m in store.current_path("c")] == [user.id, second.id]

    follow_up = store.add_message("c", "user", "Another")
    assert follow_up.parent_id == second.id
    assert first.id not in [m.id for m in store.current_path("c")]
    assert _count(get_database(), "message") == 4  # the old version is kept, just not shown

    edited = store.add_message("c", "user", "Tell me a fact", parent_id=None)  # edit the first message
    assert [m.id for m in store.current_path("c")] == [edited.id]


def test_parent_must_belong_to_the_same_chat_and_nothing_is_written() -> None:
    store = ChatStore()
    other = store.add_message("other", "user", "elsewhere")
    with pytest.raises(InvalidParameterError, match="another chat"):
        store.add_message("new-chat", "assistant", "reply", parent_id=other.id)
    with pytest.raises(MessageNotFoundError):
        store.add_message("new-chat", "assistant", "reply", parent_id=9999)
    assert store.get_chat("new-chat") is None  # the chat created in the transaction was rolled back too
    assert _count(get_database(), "message") == 1


def test_title_from_first_user_message() -> None:
    store = ChatStore()
    store.add_message("c", "system", "You are helpful.")
    assert store.get_chat("c").title is None  # type: ignore[union-attr]
    long_line = "  Explain   the\tdifference between " + "very " * 20 + "long things"
    content = f"\n\n{long_line}\nsecond line"
    message = store.add_message("c", "user", content)
    title = store.get_chat("c").title  # type: ignore[union-attr]
    assert title is not None
    assert title.startswith("Explain the difference between very")
    assert len(title) == TITLE_MAX_CHARS and title.endswith("…")
    assert message.content == content  # the message itself is never cut
    store.add_message("c", "user", "A later message")
    assert store.get_chat("c").title == title  # type: ignore[union-attr]

    store.add_message("short", "user", "Hello   there\nmore")
    assert store.get_chat("short").title == "Hello there"  # type: ignore[union-attr]
    store.get_or_create_chat("named", title="My title")
    store.add_message("named", "user", "Something else")
    assert store.get_chat("named").title == "My title"  # type: ignore[union-attr]


def test_chat_metadata_updates() -> None:
    store = ChatStore()
    chat = store.get_or_create_chat("c", model="smollm2-135m", title="First")
    assert (chat.model, chat.title) == ("smollm2-135m", "First")
    assert store.get_or_create_chat("c", model="other", title="Other") == chat  # existing chat unchanged
    store.rename_chat("c", "  Second  ")
    store.set_system_prompt("c", "Answer in French.")
    store.set_chat_model("c", "qwen2.5-0.5b")
    chat = store.get_chat("c")
    assert chat is not None
    assert (chat.title, chat.system_prompt, chat.model) == ("Second", "Answer in French.", "qwen2.5-0.5b")
    store.set_system_prompt("c", None)
    assert store.get_chat("c").system_prompt is None  # type: ignore[union-attr]
    for change in (store.rename_chat, store.set_system_prompt, store.set_chat_model):
        with pytest.raises(ChatNotFoundError):
            change("missing", "x")
    assert len(ChatStore.new_chat_id()) == 32 and ChatStore.new_chat_id() != ChatStore.new_chat_id()


def test_update_message_finalises_a_streamed_reply() -> None:
    store = ChatStore()
    store.add_message("c", "user", "Hi")
    placeholder = store.add_message("c", "assistant", "", model="smollm2-135m")
    done = store.update_message(
        placeholder.id,
        content="Hello there!",
        prompt_tokens=12,
        completion_tokens=4,
        time_to_first_token_s=0.25,
        tokens_per_s=31.5,
        finish_reason="stop",
        dropped_messages=2,
    )
    assert store.current_path("c")[-1] == done
    assert (done.content, done.prompt_tokens, done.completion_tokens) == ("Hello there!", 12, 4)
    assert (done.time_to_first_token_s, done.tokens_per_s, done.finish_reason, done.dropped_messages) == (
        0.25,
        31.5,
        "stop",
        2,
    )
    assert done.created_at == placeholder.created_at
    with pytest.raises(TypeError, match="role"):
        store.update_message(placeholder.id, role="user")
    with pytest.raises(MessageNotFoundError):
        store.update_message(9999, content="x")


def test_clear_history_keeps_the_chat() -> None:
    store = ChatStore()
    store.get_or_create_chat("c", model="smollm2-135m")
    store.set_system_prompt("c", "Be brief.")
    _conversation(store, "c")
    _conversation(store, "kept")
    title = store.get_chat("c").title  # type: ignore[union-attr]

    assert store.clear_history("c") == 4
    assert store.current_path("c") == []
    chat = store.get_chat("c")
    assert chat is not None
    assert (chat.title, chat.system_prompt, chat.model) == (title, "Be brief.", "smollm2-135m")
    assert len(store.current_path("kept")) == 4
    assert store.clear_history("c") == 0


def test_delete_chat_cascades_to_its_messages() -> None:
    store = ChatStore()
    _conversation(store, "doomed")
    store.add_message("doomed", "assistant", "sibling", parent_id=store.current_path("doomed")[0].id)
    _conversation(store, "kept")
    db = get_database()
    assert _count(db, "message") == 9

    assert store.delete_chat("doomed") is True
    assert store.get_chat("doomed") is None
    assert _count(db, "message") == 4
    assert db.execute_sql("SELECT COUNT(*) FROM message WHERE chat_id = ?", ("doomed",)).fetchone()[0] == 0
    assert store.delete_chat("doomed") is False


def test_search_escapes_wildcards_and_finds_content() -> None:
    store = ChatStore()
    store.add_message("percent", "user", "I am 100% sure")
    store.add_message("percent-lookalike", "user", "I am 100 percent sure")
    store.add_message("underscore", "user", "rename snake_case names")
    store.add_message("underscore-lookalike", "user", "rename snakeXcase names")
    store.add_message("content", "user", "first question")
    store.add_message("content", "assistant", "The Quick Brown Fox jumps")
    store.get_or_create_chat("titled", title="Holiday plans")

    def found(text: str) -> set[str]:
        return {chat.id for chat in store.search(text)}

    assert found("%") == {"percent"}
    assert found("100%") == {"percent"}
    assert found("_") == {"underscore"}
    assert found("snake_case") == {"underscore"}
    assert found("quick brown") == {"content"}  # in a later message, different case
    assert found("HOLIDAY") == {"titled"}
    assert found("back\\slash") == set()
    assert found("no such text") == set()
    assert len(store.search("   ")) == len(store.list_chats()) == 6


def test_timestamps_are_timezone_aware_utc_and_round_trip() -> None:
    store = ChatStore()
    before = datetime.now(timezone.utc)
    message = store.add_message("c", "user", "Hi")
    chat = store.get_chat("c")
    assert chat is not None
    for value in (message.created_at, chat.created_at, chat.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= value <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert store.current_path("c")[0].created_at == message.created_at
    assert chat.updated_at == message.created_at
    raw = get_database().execute_sql("SELECT created_at FROM message").fetchone()[0]
    assert raw.endswith("+00:00")

    field = UTCDateTimeField()
    field.name = "created_at"
    beijing = datetime(2024, 5, 1, 20, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    stored = field.db_value(beijing)
    assert stored == "2024-05-01T12:00:00.123456+00:00"
    assert field.python_value(stored) == beijing
    with pytest.raises(ValueError):
        field.db_value(datetime(2024, 5, 1, 12, 0))  # naive: ambiguous


def test_invalid_role_is_rejected_and_nothing_written() -> None:
    store = ChatStore()
    with pytest.raises(InvalidParameterError, match="role"):
        store.add_message("c", "robot", "beep")
    with pytest.raises(InvalidParameterError, match="dropped_messages"):
        store.add_message("c", "user", "hi", dropped_messages=-1)
    with pytest.raises(InvalidParameterError):
        store.add_message("", "user", "hi")
    assert store.get_chat("c") is None
    db = get_database()
    assert _count(db, "chat") == 0 and _count(db, "message") == 0


def test_migrations_register_in_order_and_never_twice() -> None:
    from src.db import migrations

    assert [m.__name__ for m in migrations.MIGRATIONS] == sorted(m.__name__ for m in migrations.MIGRATIONS)
    with pytest.raises(ValueError, match="two migrations"):
        migrations.migration(migrations.m001_initial)
    assert migrations.MIGRATIONS.count(migrations.m001_initial) == 1
