"""The user's own additions to the model catalog: Hub repositories added by id (``models add owner/name``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import peewee

from src.db.database import get_database, write_transaction
from src.db.models import UserModel, utc_now


@dataclass(frozen=True)
class UserModelRecord:
    id: str
    repo: str
    revision: str
    added_at: datetime


class UserModelStore:
    def __init__(self, db: peewee.Database | None = None) -> None:
        self._db = db if db is not None else get_database()

    def list(self) -> list[UserModelRecord]:
        rows = UserModel.select().order_by(UserModel.added_at).execute(self._db)
        return [UserModelRecord(r.id, r.repo, r.revision, r.added_at) for r in rows]

    def get(self, model_id: str) -> UserModelRecord | None:
        return next((m for m in self.list() if m.id == model_id), None)

    def add(self, model_id: str, repo: str, revision: str) -> UserModelRecord:
        """Add or update (same id: the repo and revision are replaced)."""
        now = utc_now()
        with write_transaction(self._db):
            UserModel.insert(id=model_id, repo=repo, revision=revision, added_at=now).on_conflict(
                conflict_target=[UserModel.id], update={UserModel.repo: repo, UserModel.revision: revision}
            ).execute(self._db)
        record = self.get(model_id)
        assert record is not None
        return record

    def remove(self, model_id: str) -> bool:
        with write_transaction(self._db):
            return bool(UserModel.delete().where(UserModel.id == model_id).execute(self._db))
