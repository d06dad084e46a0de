"""Work queued for hosts in the store, claimed under leases (issue 17, part 2).

Whoever acts (a control plane) claims an item for a host; the claim lasts until its lease
runs out, and is renewed while the work goes on. A worker that dies leaves its claim to expire,
and the next claimer takes the item again (``attempts`` counts the tries). Work on one instance
is never done by two workers at once: a claim of an instance's item takes the instance's lease
too, in the same transaction, and an instance leased to another live worker is skipped.

Both backends give the same guarantees. On PostgreSQL the candidate rows are read ``FOR UPDATE
SKIP LOCKED`` (two claimers never wait on, nor take, the same row) and the instance lease is an
upsert that waits on a concurrent one's row and re-checks it; on SQLite a claim takes the
write lock before it reads, so claims are serialized. Each step is a conditional write whose
row count says whether it won, and a claim that loses the instance's lease puts the item back
as it was (no savepoints: pysqlite's are unreliable).
"""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gureum.ids import new_id
from gureum.store.db import Database, write_lock_first
from gureum.store.schema import instance_leases as leases
from gureum.store.schema import work as t

QUEUED, CLAIMED, DONE, FAILED = "queued", "claimed", "done", "failed"
CANDIDATES = 20  # rows looked at per claim: past the instances leased to others


@dataclass(frozen=True)
class WorkItem:
    id: str
    host: str
    instance_id: str | None
    kind: str
    payload: dict[str, Any]
    state: str
    owner: str | None
    lease_until: float | None
    attempts: int
    result: dict[str, Any] | None
    created_at: float
    finished_at: float | None


def _from_row(row: RowMapping) -> WorkItem:
    return WorkItem(
        id=row["id"],
        host=row["host"],
        instance_id=row["instance_id"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        state=row["state"],
        owner=row["owner"],
        lease_until=row["lease_until"],
        attempts=int(row["attempts"]),
        result=json.loads(row["result"]) if row["result"] else None,
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


class WorkQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self, host: str, kind: str, payload: dict[str, Any], instance_id: str | None = None
    ) -> str:
        item_id = new_id("w-")
        with self.db.begin() as conn:
            conn.execute(
                insert(t).values(
                    id=item_id,
                    host=host,
                    instance_id=instance_id,
                    kind=kind,
                    payload=json.dumps(payload),
                    state=QUEUED,
                    attempts=0,
                    created_at=time.time(),
                )
            )
        return item_id

    def submit(
        self,
        host: str,
        kind: str,
        payload: dict[str, Any],
        instance_id: str,
        owner: str,
        lease_s: float,
    ) -> WorkItem | None:
        """New work on an instance, claimed by ``owner`` from the start (it does it now, and
        another takes it over only if ``owner``'s lease runs out); None, with nothing
        recorded, while another live worker holds the instance."""
        now = time.time()
        until = now + lease_s
        item_id = new_id("w-")
        with self.db.begin() as conn:
            write_lock_first(conn)  # PostgreSQL locks rows instead
            if not _lease(conn, instance_id, owner, now, until):
                return None
            conn.execute(
                insert(t).values(
                    id=item_id, host=host, instance_id=instance_id, kind=kind,
                    payload=json.dumps(payload), state=CLAIMED, owner=owner, lease_until=until,
                    attempts=1, created_at=now,
                )
            )  # fmt: skip
            row = conn.execute(select(t).where(t.c.id == item_id)).mappings().one()
        return _from_row(row)

    def held_by_others(self, owner: str, now: float | None = None) -> set[str]:
        """The instances another live worker holds now: not ``owner``'s to act on."""
        now = time.time() if now is None else now
        query = select(leases.c.instance_id).where(leases.c.owner != owner, leases.c.until >= now)
        with self.db.read() as conn:
            return {r[0] for r in conn.execute(query)}

    def claim(
        self, host: str, owner: str, lease_s: float, now: float | None = None
    ) -> WorkItem | None:
        """The oldest item for ``host`` nobody holds (queued, or claimed by a worker whose
        lease ran out) whose instance no other live worker holds, now ``owner``'s until
        ``now + lease_s``; None when there is none."""
        now = time.time() if now is None else now
        until = now + lease_s
        free = or_(t.c.state == QUEUED, and_(t.c.state == CLAIMED, t.c.lease_until < now))
        query = select(t).where(t.c.host == host, free)
        query = query.order_by(t.c.created_at, t.c.id).limit(CANDIDATES)
        if self.db.backend == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.db.begin() as conn:
            write_lock_first(conn)  # PostgreSQL locks rows instead
            for row in conn.execute(query).mappings().all():
                won = conn.execute(
                    update(t)
                    .where(t.c.id == row["id"], free)
                    .values(
                        state=CLAIMED, owner=owner, lease_until=until, attempts=t.c.attempts + 1
                    )
                ).rowcount
                if not won:
                    continue
                instance_id = row["instance_id"]
                if instance_id is not None and not _lease(conn, instance_id, owner, now, until):
                    # Another live worker acts on that instance: the item goes back as it was.
                    conn.execute(
                        update(t)
                        .where(t.c.id == row["id"])
                        .values(
                            state=row["state"],
                            owner=row["owner"],
                            lease_until=row["lease_until"],
                            attempts=row["attempts"],
                        )
                    )
                    continue
                claimed = conn.execute(select(t).where(t.c.id == row["id"])).mappings().one()
                return _from_row(claimed)
        return None

    def renew(self, owner: str, lease_s: float, now: float | None = None) -> int:
        """Extend every live claim and instance lease of ``owner`` (its heartbeat); how many
        items it still holds. A claim that already ran out is not revived: another may have
        taken it."""
        now = time.time() if now is None else now
        until = now + lease_s
        with self.db.begin() as conn:
            held = conn.execute(
                update(t)
                .where(t.c.owner == owner, t.c.state == CLAIMED, t.c.lease_until >= now)
                .values(lease_until=until)
            ).rowcount
            conn.execute(
                update(leases)
                .where(leases.c.owner == owner, leases.c.until >= now)
                .values(until=until)
            )
        return int(held or 0)

    def finish(
        self, item_id: str, owner: str, result: dict[str, Any], *, failed: bool = False
    ) -> bool:
        """Record the item's end, if ``owner`` still holds it (False: its lease ran out and
        another took it: the result is not recorded). The instance's lease goes with the
        owner's last item of that instance."""
        with self.db.begin() as conn:
            row = conn.execute(select(t).where(t.c.id == item_id)).mappings().first()
            if row is None or row["owner"] != owner or row["state"] != CLAIMED:
                return False
            conn.execute(
                update(t)
                .where(t.c.id == item_id)
                .values(
                    state=FAILED if failed else DONE,
                    result=json.dumps(result),
                    finished_at=time.time(),
                    lease_until=None,
                )
            )
            instance_id = row["instance_id"]
            if instance_id is not None:
                others = conn.execute(
                    select(t.c.id).where(
                        t.c.instance_id == instance_id, t.c.owner == owner, t.c.state == CLAIMED
                    )
                ).first()
                if others is None:
                    conn.execute(
                        delete(leases).where(
                            leases.c.instance_id == instance_id, leases.c.owner == owner
                        )
                    )
        return True

    def get(self, item_id: str) -> WorkItem | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.id == item_id)).mappings().first()
        return _from_row(row) if row else None

    def list(self, host: str | None = None) -> builtins.list[WorkItem]:
        query = select(t).order_by(t.c.created_at, t.c.id)
        if host is not None:
            query = query.where(t.c.host == host)
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(query).mappings()]


def _lease(conn: Connection, instance_id: str, owner: str, now: float, until: float) -> bool:
    """Take (or keep) the instance's lease for ``owner``, unless another holds it live."""
    dialect = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect(leases).values(instance_id=instance_id, owner=owner, until=until)
    stmt = stmt.on_conflict_do_update(
        index_elements=["instance_id"],
        set_={"owner": owner, "until": until},
        where=or_(leases.c.until < now, leases.c.owner == owner),
    )
    conn.execute(stmt)
    # Read back, not the row count: psycopg counts a conflict whose WHERE held back the update
    # as one row. PostgreSQL has locked the row either way, so this is the owner until commit.
    held = conn.execute(select(leases.c.owner).where(leases.c.instance_id == instance_id))
    return bool(held.scalar_one() == owner)
