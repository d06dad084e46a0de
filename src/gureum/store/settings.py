"""Host-wide settings the administrator changes at run time, kept across restarts."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from gureum.store.db import Database
from gureum.store.schema import settings as s


class SettingsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> str | None:
        with self.db.read() as conn:
            return conn.execute(select(s.c.value).where(s.c.name == name)).scalar()

    def put(self, name: str, value: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(s).where(s.c.name == name))
            conn.execute(insert(s).values(name=name, value=value))
