import asyncio
import threading
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa

from gureum.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, Unavailable
from gureum.model.instance import ACTIVE, Instance, InstanceSpec, State
from gureum.model.operation import Operation, OpStatus
from gureum.service.operations import OperationManager
from gureum.store import db as store_db
from gureum.store import schema
from gureum.store.db import Database
from gureum.store.instances import InstanceStore
from gureum.store.migrations import latest_version, migrate
from gureum.store.operations import OperationStore


def make(name, state=State.RUNNING, cpus=1, mem=256):
    return Instance(
        id=f"i-{name:0>12}"[:14],
        spec=InstanceSpec(name, "tiny", cpus, mem, 1 << 30),
        state=state,
        created_at=time.time(),
        image_version="v1",
    )


def test_migrations_are_idempotent(db):
    with db.begin() as conn:
        assert migrate(conn) == []
        version = conn.exec_driver_sql("SELECT MAX(version) FROM schema_migrations").scalar()
    assert version == latest_version()


def test_migrations_build_exactly_the_schema_the_code_declares(db):
    """store/schema.py (what the queries use) and store/migrations.py (what databases get) are
    two writings of one schema: every table and column of one is in the other, nullability too
    (on SQLite and on PostgreSQL)."""
    migrated = sa.inspect(db.engine)
    for table in schema.metadata.sorted_tables:
        columns = {c["name"]: c for c in migrated.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            if not column.primary_key:
                assert columns[column.name]["nullable"] == column.nullable, (table, column)
    tables = set(migrated.get_table_names()) - {"schema_migrations"}
    assert tables == set(schema.metadata.tables)


def test_instances_unique_name_and_committed(db):
    store = InstanceStore(db)
    store.insert(make("a", cpus=2, mem=512))
    store.insert(make("b", state=State.STOPPED, cpus=4, mem=1024))
    store.insert(make("c", state=State.STARTING, cpus=1, mem=128))
    with pytest.raises(Conflict, match="already exists"):
        store.insert(make("a"))
    assert store.committed(ACTIVE) == (3, 640)
    store.update(store.get_by_name("a", "p-default").id, state=State.STOPPED)
    assert store.get_by_name("a", "p-default").state == State.STOPPED
    assert [i.name for i in store.list()] == ["a", "b", "c"]


def test_operations_progress_wait_and_failure(db):
    async def main():
        ops = OperationManager(OperationStore(db))
        gate = asyncio.Event()

        async def work(ctx):
            ctx.progress("step one")
            await gate.wait()
            ctx.progress("step two", 0.5)
            return {"answer": 42}

        op = ops.start("launch", "i-1", work)
        first = await ops.wait(op.id, timeout=5)
        assert [p.message for p in first.progress] == ["step one"]
        started = time.monotonic()
        waiter = asyncio.ensure_future(ops.wait(op.id, timeout=10, progress_after=1))
        await asyncio.sleep(0.05)
        gate.set()
        later = await waiter
        assert time.monotonic() - started < 2  # answered on news, not at the timeout
        assert len(later.progress) >= 2
        done = await ops.wait(op.id, timeout=5, progress_after=2)
        assert done.status == OpStatus.SUCCEEDED and done.result == {"answer": 42}
        assert ops.store.get(op.id).status == OpStatus.SUCCEEDED

        async def bad(ctx):
            raise InvalidInput("nope")

        failed = ops.start("launch", "i-2", bad)
        failed = await ops.wait(failed.id, timeout=5)
        assert failed.error == {"code": "invalid-input", "message": "nope"}
        with pytest.raises(NotFound):
            ops.get("op-missing")

    asyncio.run(main())


def test_interrupted_operations_are_marked(db):
    # A service killed mid-operation leaves its row "running"; the next start marks it.
    store = OperationStore(db)
    store.insert(Operation("op-dead", "launch", "i-1", OpStatus.RUNNING, time.time()))
    fresh = OperationManager(store)
    assert fresh.interrupt_stale() == 1
    assert store.get("op-dead").status == OpStatus.FAILED
    assert store.get("op-dead").error["code"] == "interrupted"


def test_cancelled_operations_are_recorded(db):
    # A graceful shutdown cancels running work; it is recorded as interrupted, not lost.
    async def main():
        ops = OperationManager(OperationStore(db))

        async def work(ctx):
            await asyncio.Event().wait()

        op = ops.start("launch", "i-1", work)
        await asyncio.sleep(0)
        await ops.shutdown()
        return op.id

    op_id = asyncio.run(main())
    assert OperationStore(db).get(op_id).error["code"] == "interrupted"


def test_database_url_is_checked(tmp_path):
    from gureum.errors import Unavailable

    with pytest.raises(InvalidInput, match="postgresql://"):
        Database.open_url("mysql://root@localhost/gureum")
    with pytest.raises(InvalidInput, match="not a database URL"):
        Database.open_url("not a url")
    # Nothing listens there: a clear error that names the place, never the password.
    with pytest.raises(Unavailable, match="cannot reach") as caught:
        Database.open_url(f"postgresql://gureum:s3cret@/gureum?host={tmp_path}")
    assert "s3cret" not in str(caught.value)


def test_backend_is_reported(db):
    assert db.backend in ("sqlite", "postgresql")


def test_audit_retention(db):
    from sqlalchemy import update

    from gureum.service.reconciler import Reconciler
    from gureum.service.tenancy import TenancyService
    from gureum.store.schema import audit
    from gureum.store.tenancy import TenancyStore

    tenancy = TenancyService(TenancyStore(db))
    for action in ("POST /old", "POST /new"):
        tenancy.store.record(user="u", project=None, action=action, target=None, result=200)
    with db.begin() as conn:  # one entry is 91 days old
        conn.execute(
            update(audit).where(audit.c.action == "POST /old").values(at=time.time() - 91 * 86400)
        )
    assert tenancy.prune_audit(0) == 0  # 0: kept forever
    assert len(tenancy.store.audit()) == 2
    # The service's housekeeping runs it (a failing chore does not stop the others).
    failing = [lambda: 1 / 0, lambda: tenancy.prune_audit(90)]
    Reconciler(None, None, None, None, 1.0, chores=failing).run_chores()  # type: ignore[arg-type]  # only its chores run
    assert [r["action"] for r in tenancy.store.audit()] == ["POST /new"]
    week = tenancy.store.audit(since=time.time() - 7 * 86400)
    assert [r["action"] for r in week] == ["POST /new"]


def test_what_an_instance_is_is_kept_and_earlier_ones_are_vms(db):
    """Migration 16: every instance made before it is a VM; a container stays one."""
    store = InstanceStore(db)
    store.insert(make("vm1"))
    store.insert(replace(make("ct1"), kind="container"))
    assert store.get_by_name("vm1", "p-default").kind == "vm"
    assert store.get_by_name("ct1", "p-default").kind == "container"
    with db.begin() as conn:  # a row as an older gureum wrote it: no kind given
        conn.exec_driver_sql(
            "INSERT INTO instances (id, project_id, name, image, image_version, cpus, memory_mib,"
            " disk_bytes, state, boot, created_at, updated_at) VALUES ('i-old000000000',"
            " 'p-default', 'old', 'tiny', 'v1', 1, 256, 1073741824, 'stopped', '{}', 0, 0)"
        )
    assert store.get_by_name("old", "p-default").kind == "vm"


def test_two_creations_under_one_lock_are_counted_one_after_the_other(db, db_url, tmp_path):
    """Two control planes (two engines on one database) write an instance of one project at
    the same instant, each under the project's lock: the second's recheck runs only once the
    first's transaction has ended, and its reads count the first's instance."""
    other_db = Database.open_url(db_url) if db_url else Database.open_sqlite(tmp_path / "s.db")
    first, second = InstanceStore(db), InstanceStore(other_db)
    lock = ("project-instances:p-default",)
    inside = threading.Event()
    seen: dict[str, int] = {}

    def slow_recheck() -> None:
        inside.set()
        time.sleep(0.5)  # the first holds the project's lock meanwhile

    def refuse_past_one() -> None:
        seen.update(second.allocated("p-default"))
        if seen["instances"] + 1 > 1:
            raise QuotaExceeded("one instance at most")

    a, b = make("a", cpus=2), make("b", cpus=2)
    writer = threading.Thread(target=first.create, args=(a, [], []), kwargs={
        "locks": lock, "recheck": slow_recheck})  # fmt: skip
    writer.start()
    try:
        assert inside.wait(10)
        with pytest.raises(QuotaExceeded):
            second.create(b, [], [], locks=lock, recheck=refuse_past_one)
    finally:
        writer.join(10)
        other_db.close()
    assert seen == {"instances": 1, "cpus": 2, "memory_mib": 256, "disk_bytes": 1 << 30}
    assert [i.name for i in first.list()] == ["a"]


def test_a_lock_held_past_its_wait_is_unavailable_not_a_stall(postgres, monkeypatch):
    """A control plane that froze holding a project's lock: another's creation waits
    LOCK_WAIT_MS at most, then is `unavailable` (its event loop was stalled meanwhile)."""
    monkeypatch.setattr(store_db, "LOCK_WAIT_MS", 300)
    url = postgres.new_database()
    holder_db, other_db = Database.open_url(url), Database.open_url(url)
    held, done = threading.Event(), threading.Event()
    lock = "project-instances:p-default"

    def hold() -> None:
        with holder_db.begin() as conn:
            store_db.hold_lock(conn, lock)
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            InstanceStore(other_db).create(make("b"), [], [], locks=(lock,))
        assert time.monotonic() - started < 3
        assert InstanceStore(other_db).list() == []
    finally:
        done.set()
        holder.join(10)
        holder_db.close()
        other_db.close()
