"""The hosts table: every host instances are placed on, its state and what it can give."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import RowMapping, insert, select, update

from gureum.store.db import Database
from gureum.store.schema import hosts as t
from gureum.store.schema import instances


@dataclass(frozen=True)
class HostRecord:
    name: str
    state: str  # ready or cordoned (unreachable is seen from heartbeat_at, never stored)
    accel: str
    cpus: int
    memory_mib: int
    memory_reserve_mib: int
    cpu_overcommit: float
    heartbeat_at: float
    created_at: float


def _from_row(row: RowMapping) -> HostRecord:
    return HostRecord(
        name=row["name"],
        state=row["state"],
        accel=row["accel"],
        cpus=int(row["cpus"]),
        memory_mib=int(row["memory_mib"]),
        memory_reserve_mib=int(row["memory_reserve_mib"]),
        cpu_overcommit=float(row["cpu_overcommit"]),
        heartbeat_at=row["heartbeat_at"],
        created_at=row["created_at"],
    )


class HostStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def report(self, name: str, now: float, **facts: object) -> None:
        """A host says it is alive, and what it has (``accel``, ``cpus``, ``memory_mib``,
        ``memory_reserve_mib``, ``cpu_overcommit``); its state (cordoned or not) is kept. A
        host reporting for the first time is ready, and takes the instances recorded before
        hosts were (a store from one host)."""
        facts["heartbeat_at"] = now
        with self.db.begin() as conn:
            known = conn.execute(select(t.c.name).where(t.c.name == name)).first()
            if known:
                conn.execute(update(t).where(t.c.name == name).values(**facts))
            else:
                conn.execute(insert(t).values(name=name, state="ready", created_at=now, **facts))
            conn.execute(update(instances).where(instances.c.host.is_(None)).values(host=name))

    def list(self) -> list[HostRecord]:
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(select(t).order_by(t.c.name)).mappings()]

    def get(self, name: str) -> HostRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.name == name)).mappings().first()
        return _from_row(row) if row else None

    def set_state(self, name: str, state: str) -> None:
        with self.db.begin() as conn:
            conn.execute(update(t).where(t.c.name == name).values(state=state))

    def spread_groups(self, host: str) -> frozenset[str]:
        """The spread groups of the instances on ``host``."""
        query = (
            select(instances.c.spread_group)
            .where(instances.c.host == host, instances.c.spread_group.is_not(None))
            .distinct()
        )
        with self.db.read() as conn:
            return frozenset(r[0] for r in conn.execute(query))
