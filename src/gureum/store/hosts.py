"""The hosts table: every host instances are placed on, its state and what it can give."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, insert, select, update

from gureum.store.db import Database
from gureum.store.schema import hosts as t
from gureum.store.schema import instances
from gureum.store.schema import join_tokens as tokens


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
    address: str | None = None  # where its agent answers (None: this host, in-process)
    cluster_port: str | None = None  # a control plane's: where agents report to it


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
        address=row["address"],
        cluster_port=row["cluster_port"],
    )


class HostStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def report(self, name: str, now: float, *, adopt: bool = False, **facts: Any) -> None:
        """A host says it is alive, and what it has (``accel``, ``cpus``, ``memory_mib``,
        ``memory_reserve_mib``, ``cpu_overcommit``); its state (cordoned or not) is kept. A
        host reporting for the first time is ready. ``adopt`` (the control plane's own host):
        it takes the instances recorded before hosts were (a store from one host)."""
        facts["heartbeat_at"] = now
        with self.db.begin() as conn:
            known = conn.execute(select(t.c.name).where(t.c.name == name)).first()
            if known:
                conn.execute(update(t).where(t.c.name == name).values(**facts))
            else:
                conn.execute(insert(t).values(name=name, state="ready", created_at=now, **facts))
            if adopt:
                unplaced = instances.c.host.is_(None)
                conn.execute(update(instances).where(unplaced).values(host=name))

    def enrol(self, name: str, address: str, now: float) -> None:
        """A host whose agent joined: known, never heard from yet (unreachable until its first
        heartbeat), nothing to give until it says what it has."""
        with self.db.begin() as conn:
            conn.execute(
                insert(t).values(
                    name=name, state="ready", accel="", cpus=0, memory_mib=0,
                    memory_reserve_mib=0, cpu_overcommit=1.0, heartbeat_at=0.0,
                    created_at=now, address=address,
                )
            )  # fmt: skip

    def add_join_token(
        self, secret_hash: str, host: str, address: str, expires_at: float, now: float
    ) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(tokens).values(
                    secret_hash=secret_hash,
                    host=host,
                    address=address,
                    expires_at=expires_at,
                    created_at=now,
                )
            )

    def use_join_token(self, secret_hash: str, now: float) -> tuple[str, str] | None:
        """(host, address) of an unused, unexpired token, now used (once: the UPDATE's own
        condition decides between two joins racing with one token)."""
        fresh = (tokens.c.secret_hash == secret_hash) & tokens.c.used_at.is_(None)
        with self.db.begin() as conn:
            won = conn.execute(
                update(tokens).where(fresh, tokens.c.expires_at > now).values(used_at=now)
            ).rowcount
            if not won:
                return None
            row = conn.execute(
                select(tokens.c.host, tokens.c.address).where(tokens.c.secret_hash == secret_hash)
            ).one()
        return row[0], row[1]

    def list(self) -> list[HostRecord]:
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(select(t).order_by(t.c.name)).mappings()]

    def get(self, name: str) -> HostRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.name == name)).mappings().first()
        return _from_row(row) if row else None

    def control_planes(self, since: float) -> builtins.list[str]:
        """The cluster ports of the control planes that reported since ``since``, newest
        report first: where an agent may report to."""
        query = (
            select(t.c.cluster_port)
            .where(t.c.cluster_port.is_not(None), t.c.heartbeat_at >= since)
            .order_by(t.c.heartbeat_at.desc())
        )
        with self.db.read() as conn:
            return [r[0] for r in conn.execute(query)]

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
