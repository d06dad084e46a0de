"""Projects' SSH key pairs."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from gureum.errors import Conflict
from gureum.model.sshkeys import KeyPair
from gureum.store.db import Database
from gureum.store.schema import keypairs as t


class KeyPairStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, pair: KeyPair) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(insert(t).values(**pair.__dict__))
        except IntegrityError as exc:
            raise Conflict(f"a key pair named {pair.name!r} already exists") from exc

    def list(self, project_id: str) -> list[KeyPair]:
        query = select(t).where(t.c.project_id == project_id).order_by(t.c.name)
        with self.db.read() as conn:
            return [KeyPair(**dict(r)) for r in conn.execute(query).mappings()]

    def count(self, project_id: str) -> int:
        query = select(func.count()).select_from(t).where(t.c.project_id == project_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def remove(self, pair_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(t).where(t.c.id == pair_id))
