"""Disk layers and snapshots tables, and the reachability rule that keeps chains whole."""

from __future__ import annotations

from sqlalchemy import RowMapping, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gureum.errors import Conflict
from gureum.model.hardware import Hardware
from gureum.model.snapshot import Layer, Snapshot
from gureum.store.db import Database
from gureum.store.schema import instances, layers, snapshots


def _layer(row: RowMapping) -> Layer:
    return Layer(
        row["id"], row["instance_id"], row["path"], row["backing"], row["created_at"],
        row["base_image"], row["host"],
    )  # fmt: skip


def _snapshot(row: RowMapping) -> Snapshot:
    return Snapshot(
        id=row["id"],
        instance_id=row["instance_id"],
        name=row["name"],
        layer=row["layer"],
        memory=bool(row["memory"]),
        consistency=row["consistency"],
        hardware=Hardware.from_json(row["hardware"]),
        disk_bytes=int(row["disk_bytes"]),
        size_bytes=int(row["size_bytes"]),
        created_at=row["created_at"],
    )


class LayerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, layer: Layer) -> None:
        with self.db.begin() as conn:
            conn.execute(insert(layers).values(**layer.__dict__))

    def add_on_top(self, layer: Layer, instance_id: str) -> None:
        """Record a new top layer and make it the instance's disk, in one transaction."""
        with self.db.begin() as conn:
            conn.execute(insert(layers).values(**layer.__dict__))
            conn.execute(
                update(instances).where(instances.c.id == instance_id).values(root_layer=layer.id)
            )

    def get(self, layer_id: str) -> Layer | None:
        with self.db.read() as conn:
            row = conn.execute(select(layers).where(layers.c.id == layer_id)).mappings().first()
        return _layer(row) if row else None

    def all(self) -> dict[str, Layer]:
        with self.db.read() as conn:
            return {r["id"]: _layer(r) for r in conn.execute(select(layers)).mappings()}

    def chain(self, layer_id: str) -> list[Layer]:
        """The layer and everything under it, top first (ending early at a layer the store
        no longer has, as ``unreachable`` does)."""
        every = self.all()
        out = []
        current: str | None = layer_id
        while current is not None and current in every:
            out.append(every[current])
            current = every[current].backing
        return out

    def unreachable(self) -> list[Layer]:
        """Layers no VM disk and no snapshot builds on: safe to delete, and only those."""
        with self.db.begin() as conn:
            roots = {r for (r,) in conn.execute(select(instances.c.root_layer)) if r}
            roots |= {r for (r,) in conn.execute(select(snapshots.c.layer))}
        every = self.all()
        keep: set[str] = set()
        for root in roots:
            current: str | None = root
            while current is not None and current not in keep and current in every:
                keep.add(current)
                current = every[current].backing
        return [layer for lid, layer in every.items() if lid not in keep]

    def users(self, layer_id: str) -> list[str]:
        """Instance ids whose disk chain includes this layer."""
        every = self.all()
        with self.db.read() as conn:
            rows = conn.execute(select(instances.c.id, instances.c.root_layer)).all()
        found = []
        for instance_id, root in rows:
            current = root
            while current is not None and current in every:
                if current == layer_id:
                    found.append(instance_id)
                    break
                current = every[current].backing
        return found

    def remove(self, layer_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(layers).where(layers.c.id == layer_id))

    def set_base_image(self, layer_id: str, base_image: str | None) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(layers).where(layers.c.id == layer_id).values(base_image=base_image)
            )


class SnapshotStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, snap: Snapshot) -> None:
        values = {**snap.__dict__, "hardware": snap.hardware.to_json(), "memory": int(snap.memory)}
        try:
            with self.db.begin() as conn:
                conn.execute(insert(snapshots).values(**values))
        except IntegrityError as exc:
            raise Conflict(f"a snapshot named {snap.name!r} already exists") from exc

    def get(self, instance_id: str, name: str) -> Snapshot | None:
        query = select(snapshots).where(
            snapshots.c.instance_id == instance_id, snapshots.c.name == name
        )
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _snapshot(row) if row else None

    def by_id(self, snapshot_id: str) -> Snapshot | None:
        query = select(snapshots).where(snapshots.c.id == snapshot_id)
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _snapshot(row) if row else None

    def list(self, instance_id: str | None = None) -> list[Snapshot]:
        query = select(snapshots).order_by(snapshots.c.created_at)
        if instance_id is not None:
            query = query.where(snapshots.c.instance_id == instance_id)
        with self.db.read() as conn:
            return [_snapshot(r) for r in conn.execute(query).mappings()]

    def count(self, project_id: str) -> int:
        """How many snapshots a project's instances have (what its quota counts)."""
        query = (
            select(func.count())
            .select_from(snapshots.join(instances, instances.c.id == snapshots.c.instance_id))
            .where(instances.c.project_id == project_id)
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def remove(self, snapshot_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(snapshots).where(snapshots.c.id == snapshot_id))
