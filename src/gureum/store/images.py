"""The image catalog table."""

from __future__ import annotations

import json

from sqlalchemy import RowMapping, delete, func, insert, select

from gureum.model.hardware import BIOS
from gureum.model.image import Image
from gureum.store.db import Database
from gureum.store.schema import images as t


def _from_row(row: RowMapping) -> Image:
    files = json.loads(row["files"])
    return Image(
        name=row["name"],
        version=row["version"],
        kernel_version=row["kernel_version"],
        path=row["path"],
        files=files,
        packages=json.loads(row["packages"]),
        disk_virtual_bytes=int(row["disk_virtual_bytes"]),
        built_at=row["built_at"],
        default_user=row["default_user"],
        origin=row["origin"] or "built",
        # Imported before UEFI was told apart: every such image was booted by SeaBIOS.
        firmware=row["firmware"] or (BIOS if "disk" in files and "kernel" not in files else None),
        project_id=row["project_id"],
        description=row["description"] or "",
    )


class ImageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, image: Image) -> None:
        """Insert or replace the catalog entry, in one transaction."""
        with self.db.begin() as conn:
            conn.execute(delete(t).where(t.c.name == image.name))
            conn.execute(
                insert(t).values(
                    name=image.name,
                    version=image.version,
                    kernel_version=image.kernel_version,
                    path=image.path,
                    files=json.dumps(image.files),
                    packages=json.dumps(image.packages),
                    disk_virtual_bytes=image.disk_virtual_bytes,
                    built_at=image.built_at,
                    default_user=image.default_user,
                    origin=image.origin,
                    firmware=image.firmware,
                    project_id=image.project_id,
                    description=image.description,
                )
            )

    def get(self, name: str) -> Image | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.name == name)).mappings().first()
        return _from_row(row) if row else None

    def list(self) -> list[Image]:
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(select(t).order_by(t.c.name)).mappings()]

    def count(self, project_id: str) -> int:
        """How many images the project made (they count against its snapshot quota)."""
        query = select(func.count()).select_from(t).where(t.c.project_id == project_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def delete(self, name: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(t).where(t.c.name == name))
