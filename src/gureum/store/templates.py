"""Image templates, and which instances were cloned from each."""

from __future__ import annotations

from sqlalchemy import RowMapping, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from gureum.errors import Conflict
from gureum.model.template import Shape, Template
from gureum.store.db import Database
from gureum.store.schema import instances
from gureum.store.schema import templates as t


def _from_row(row: RowMapping) -> Template:
    return Template(
        id=row["id"],
        image=row["image"],
        image_version=row["image_version"],
        shape=Shape(row["cpus"], row["memory_mib"], row["nics"]),
        disk_bytes=int(row["disk_bytes"]),
        instance_id=row["instance_id"],
        snapshot_id=row["snapshot_id"],
        size_bytes=int(row["size_bytes"]),
        created_at=row["created_at"],
    )


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, tpl: Template) -> None:
        values = {**tpl.to_dict(), "cpus": tpl.shape.cpus}
        try:
            with self.db.begin() as conn:
                conn.execute(insert(t).values(**values))
        except IntegrityError as exc:
            raise Conflict(f"image {tpl.image!r} already has a template of that shape") from exc

    def find(self, image: str, version: str, shape: Shape) -> Template | None:
        query = select(t).where(
            t.c.image == image,
            t.c.image_version == version,
            t.c.cpus == shape.cpus,
            t.c.memory_mib == shape.memory_mib,
            t.c.nics == shape.nics,
        )
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _from_row(row) if row else None

    def list(self, image: str | None = None) -> list[Template]:
        query = select(t).order_by(t.c.image, t.c.created_at)
        if image is not None:
            query = query.where(t.c.image == image)
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(query).mappings()]

    def clones(self, template_id: str) -> int:
        """How many instances were cloned from it (and exist)."""
        query = select(func.count()).where(instances.c.template_id == template_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def remove(self, template_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(t).where(t.c.id == template_id))
