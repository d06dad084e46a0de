"""Tags (key, value) on a project's resources, by the resource's gureum id."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gureum.store.db import Database
from gureum.store.schema import tags as t


class TagStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, project_id: str, resource_id: str, key: str, value: str) -> None:
        """Set (or replace) one tag."""
        insert = pg_insert if self.db.backend == "postgresql" else sqlite_insert
        stmt = insert(t).values(resource_id=resource_id, key=key, value=value,
                                project_id=project_id)  # fmt: skip
        stmt = stmt.on_conflict_do_update(
            index_elements=["resource_id", "key"], set_={"value": value}
        )
        with self.db.begin() as conn:
            conn.execute(stmt)

    def remove(self, resource_id: str, key: str, value: str | None = None) -> None:
        where = (t.c.resource_id == resource_id) & (t.c.key == key)
        if value is not None:
            where &= t.c.value == value
        with self.db.begin() as conn:
            conn.execute(delete(t).where(where))

    def of(self, project_id: str) -> list[tuple[str, str, str]]:
        """(resource id, key, value) of every tag in the project."""
        query = select(t.c.resource_id, t.c.key, t.c.value).where(t.c.project_id == project_id)
        with self.db.read() as conn:
            return [
                (r[0], r[1], r[2]) for r in conn.execute(query.order_by(t.c.resource_id, t.c.key))
            ]

    def count(self, resource_id: str) -> int:
        query = select(func.count()).select_from(t).where(t.c.resource_id == resource_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def forget(self, project_id: str, keep: set[str]) -> None:
        """Remove the tags of the project's resources that are gone (all but ``keep``)."""
        gone = {r for r, _, _ in self.of(project_id)} - keep
        if gone:
            with self.db.begin() as conn:
                conn.execute(delete(t).where(t.c.resource_id.in_(sorted(gone))))
