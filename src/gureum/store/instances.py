"""The instances table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, RowMapping, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gureum.engine.container.bundle import UID_RANGE as CONTAINER_UID_RANGE
from gureum.errors import Conflict, Unavailable
from gureum.model.hardware import Hardware
from gureum.model.instance import BootTimeline, Instance, InstanceSpec, State
from gureum.model.network import Nic
from gureum.model.snapshot import Layer
from gureum.store.db import Database, hold_lock
from gureum.store.schema import forwards, instance_secgroups, layers, nics, sequences, snapshots
from gureum.store.schema import instances as t

VM_UID_BASE = 1_500_000_000
CONTAINER_UID_BASE = 1_600_000_000
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel


def _from_row(row: RowMapping) -> Instance:
    return Instance(
        id=row["id"],
        spec=InstanceSpec(
            name=row["name"],
            image=row["image"],
            cpus=int(row["cpus"]),
            memory_mib=int(row["memory_mib"]),
            disk_bytes=int(row["disk_bytes"]),
        ),
        image_version=row["image_version"],
        state=State(row["state"]),
        state_reason=row["state_reason"],
        accel=row["accel"],
        pid=row["pid"],
        boot=BootTimeline.from_raw(json.loads(row["boot"] or "{}")),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        root_layer=row["root_layer"],
        hardware=Hardware.from_json(row["hardware"]) if row["hardware"] else None,
        user_data=row["user_data"],
        ssh_keys=tuple(json.loads(row["ssh_keys"] or "[]")),
        project_id=row["project_id"],
        uid=row["uid"],
        autostart=bool(row["autostart"]),
        host_keys=tuple(json.loads(row["host_keys"] or "[]")),
        template_id=row["template_id"],
        kind=row["kind"],
        host=row["host"],
        spread_group=row["spread_group"],
    )


class InstanceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, inst: Instance, conn: Connection | None = None) -> None:
        values = {
            "id": inst.id,
            "name": inst.spec.name,
            "image": inst.spec.image,
            "image_version": inst.image_version,
            "cpus": inst.spec.cpus,
            "memory_mib": inst.spec.memory_mib,
            "disk_bytes": inst.spec.disk_bytes,
            "state": inst.state.value,
            "state_reason": inst.state_reason,
            "accel": inst.accel,
            "pid": inst.pid,
            "boot": json.dumps(inst.boot.raw()),
            "created_at": inst.created_at,
            "updated_at": inst.created_at,
            "root_layer": inst.root_layer,
            "hardware": inst.hardware.to_json() if inst.hardware else None,
            "user_data": inst.user_data,
            "ssh_keys": json.dumps(list(inst.ssh_keys)),
            "project_id": inst.project_id,
            "uid": inst.uid,
            "autostart": int(inst.autostart),
            "host_keys": json.dumps(list(inst.host_keys)),
            "template_id": inst.template_id,
            "kind": inst.kind,
            "host": inst.host,
            "spread_group": inst.spread_group,
        }
        try:
            if conn is not None:
                conn.execute(insert(t).values(**values))
            else:
                with self.db.begin() as c:
                    c.execute(insert(t).values(**values))
        except IntegrityError as exc:
            raise Conflict(
                f"an instance named {inst.spec.name!r} already exists in this project"
            ) from exc

    def create(
        self,
        inst: Instance,
        nics_: list[Nic],
        group_ids: list[str],
        layers_: list[Layer] | tuple[Layer, ...] = (),
        locks: Sequence[str] = (),
        recheck: Callable[[], None] | None = None,
    ) -> None:
        """An instance with its NICs, its security groups and the disk layers made for it
        (an import's own base), in one transaction: all of it is in the store, or none.

        ``locks`` are taken first, for the whole transaction (``hold_lock``), and then
        ``recheck`` runs, and may refuse: its reads see every instance another process wrote
        under the same locks. Two control planes creating instances in one project, or on
        one host, at the same instant are so serialized there, and the second counts the
        first's."""
        try:
            with self.db.begin() as conn:
                for key in sorted(locks):  # one order: no two creations wait on each other
                    hold_lock(conn, key)
                if recheck is not None:
                    recheck()
                for layer in layers_:
                    conn.execute(insert(layers).values(**layer.__dict__))
                self.insert(inst, conn)
                for nic in nics_:
                    conn.execute(insert(nics).values(**nic.__dict__))
                for gid in group_ids:
                    conn.execute(
                        insert(instance_secgroups).values(instance_id=inst.id, secgroup_id=gid)
                    )
        except IntegrityError as exc:
            raise Conflict(
                f"cannot create {inst.spec.name!r}: an address or MAC was taken meanwhile"
            ) from exc

    def forget(self, instance_id: str) -> None:
        """An instance and every row that is its alone (NICs, forwards, group memberships,
        snapshots), in one transaction. Its disk layers are collected after: a clone may
        build on them."""
        with self.db.begin() as conn:
            conn.execute(delete(nics).where(nics.c.instance_id == instance_id))
            conn.execute(delete(forwards).where(forwards.c.instance_id == instance_id))
            conn.execute(
                delete(instance_secgroups).where(instance_secgroups.c.instance_id == instance_id)
            )
            conn.execute(delete(snapshots).where(snapshots.c.instance_id == instance_id))
            conn.execute(delete(t).where(t.c.id == instance_id))

    def get(self, instance_id: str) -> Instance | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.id == instance_id)).mappings().first()
        return _from_row(row) if row else None

    def get_by_name(self, name: str, project_id: str) -> Instance | None:
        query = select(t).where(t.c.name == name, t.c.project_id == project_id)
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _from_row(row) if row else None

    def list(self, project_id: str | None = None, host: str | None = None) -> list[Instance]:
        """Every instance; of ``project_id`` only, or placed on ``host`` only, when given."""
        query = select(t).order_by(t.c.created_at)
        if project_id is not None:
            query = query.where(t.c.project_id == project_id)
        if host is not None:
            query = query.where(t.c.host == host)
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        return [_from_row(r) for r in rows]

    def allocated(self, project_id: str) -> dict[str, int]:
        """What a project's instances hold, whatever their state (quotas count these)."""
        query = select(
            func.count(),
            func.coalesce(func.sum(t.c.cpus), 0),
            func.coalesce(func.sum(t.c.memory_mib), 0),
            func.coalesce(func.sum(t.c.disk_bytes), 0),
        ).where(t.c.project_id == project_id)
        with self.db.read() as conn:
            n, cpus, mem, disk = conn.execute(query).one()
        return {"instances": int(n), "cpus": int(cpus), "memory_mib": int(mem),
                "disk_bytes": int(disk)}  # fmt: skip

    def update(self, instance_id: str, **fields: object) -> None:
        if "state" in fields and isinstance(fields["state"], State):
            fields["state"] = fields["state"].value
        if "boot" in fields and isinstance(fields["boot"], BootTimeline):
            fields["boot"] = json.dumps(fields["boot"].raw())
        if "hardware" in fields and isinstance(fields["hardware"], Hardware):
            fields["hardware"] = fields["hardware"].to_json()
        if "host_keys" in fields and isinstance(fields["host_keys"], tuple | list):
            fields["host_keys"] = json.dumps(list(fields["host_keys"]))
        fields["updated_at"] = time.time()
        with self.db.begin() as conn:
            conn.execute(update(t).where(t.c.id == instance_id).values(**fields))

    def next_uid(self) -> int:
        """A user id no VM ever had on this host (1 500 000 000 and up: clear of the system's
        and of the usual subordinate id ranges)."""
        return VM_UID_BASE + self._next("vm_uid")

    def next_uid_range(self) -> int:
        """The first of ``CONTAINER_UID_RANGE`` user ids no container ever had on this host
        (from 1 600 000 000: above every VM's, room for 40 000 containers below 2^32)."""
        n = self._next("container_uid")
        first = CONTAINER_UID_BASE + n * CONTAINER_UID_RANGE
        if first + CONTAINER_UID_RANGE > MAX_UID:
            raise Unavailable("this host has given out every range of user ids for containers")
        return first

    def _next(self, sequence: str) -> int:
        with self.db.begin() as conn:
            conn.execute(
                update(sequences)
                .where(sequences.c.name == sequence)
                .values(value=sequences.c.value + 1)
            )
            value = conn.execute(
                select(sequences.c.value).where(sequences.c.name == sequence)
            ).scalar_one()
        return int(value)

    def delete(self, instance_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(t).where(t.c.id == instance_id))

    def committed(
        self, states: frozenset[State], conn: Connection | None = None
    ) -> tuple[int, int]:
        """Sum of (vCPUs, memory MiB) over instances in the given states."""
        query = select(
            func.coalesce(func.sum(t.c.cpus), 0), func.coalesce(func.sum(t.c.memory_mib), 0)
        ).where(t.c.state.in_([s.value for s in states]))
        if conn is not None:
            cpus, mem = conn.execute(query).one()
        else:
            with self.db.begin() as c:
                cpus, mem = c.execute(query).one()
        return int(cpus), int(mem)

    def count_on_host(self, host: str) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).where(t.c.host == host)).scalar() or 0)

    def count_using_image(self, image: str, project_id: str | None = None) -> int:
        """Instances made from ``image``; of ``project_id`` only when given (a project's own
        image: another project's instance that names it, an imported backup's, is not a use)."""
        query = select(func.count()).where(t.c.image == image)
        if project_id is not None:
            query = query.where(t.c.project_id == project_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)
