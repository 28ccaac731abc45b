"""Hearth's own data is the user's alone: a generated program of another user, or another user of the machine,
cannot read the chats (issue 12, item 6)."""

from __future__ import annotations

import stat
from pathlib import Path

from src.db.database import get_database
from src.settings import get_settings


def test_the_data_folder_and_the_database_are_private(hearth_data_dir: Path) -> None:
    assert not hearth_data_dir.exists()
    get_database()
    database = get_settings().db_path
    assert stat.S_IMODE(hearth_data_dir.stat().st_mode) == 0o700
    for path in [database, *database.parent.glob(database.name + "-*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
