"""The operations table: a durable record of long work, so a restart never hides a half-done job."""

from __future__ import annotations

import builtins
import json

from sqlalchemy import RowMapping, insert, select, update

from gureum.model.operation import Operation, OpStatus, Progress
from gureum.store.db import Database
from gureum.store.schema import operations as t


def _from_row(row: RowMapping) -> Operation:
    return Operation(
        id=row["id"],
        kind=row["kind"],
        target=row["target"],
        status=OpStatus(row["status"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        progress=[Progress(**p) for p in json.loads(row["progress"] or "[]")],
        error=json.loads(row["error"]) if row["error"] else None,
        result=json.loads(row["result"]) if row["result"] else None,
        project_id=row["project_id"],
        owner=row["owner"],
    )


def _values(op: Operation) -> dict[str, object]:
    return {
        "status": op.status.value,
        "progress": json.dumps([p.__dict__ for p in op.progress]),
        "error": json.dumps(op.error) if op.error else None,
        "result": json.dumps(op.result) if op.result is not None else None,
        "finished_at": op.finished_at,
        "owner": op.owner,
    }


class OperationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, op: Operation) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(t).values(
                    id=op.id,
                    kind=op.kind,
                    target=op.target,
                    created_at=op.created_at,
                    project_id=op.project_id,
                    **_values(op),
                )
            )

    def save(self, op: Operation) -> None:
        with self.db.begin() as conn:
            conn.execute(update(t).where(t.c.id == op.id).values(**_values(op)))

    def get(self, op_id: str) -> Operation | None:
        with self.db.read() as conn:
            row = conn.execute(select(t).where(t.c.id == op_id)).mappings().first()
        return _from_row(row) if row else None

    def list(
        self,
        limit: int = 50,
        target: str | None = None,
        project_id: str | None = None,
        unowned: bool = False,
    ) -> list[Operation]:
        """``project_id``: that project's only; with ``unowned`` those of no project too."""
        query = select(t).order_by(t.c.created_at.desc()).limit(limit)
        if target:
            query = query.where(t.c.target == target)
        if project_id is not None and unowned:
            query = query.where((t.c.project_id == project_id) | t.c.project_id.is_(None))
        elif project_id is not None:
            query = query.where(t.c.project_id == project_id)
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(query).mappings().all()]

    def list_running(self, owner: str) -> builtins.list[Operation]:
        """The running operations of control plane ``owner`` (and of none: from before
        operations had owners); another's are its own to finish."""
        mine = (t.c.owner == owner) | t.c.owner.is_(None)
        query = select(t).where(t.c.status == OpStatus.RUNNING.value, mine)
        with self.db.read() as conn:
            return [_from_row(r) for r in conn.execute(query).mappings().all()]
