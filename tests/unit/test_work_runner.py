"""Work on joined hosts' instances through the queue (issue 17, part 2), two control planes on
one store (SQLite and a real PostgreSQL): one that dies mid-way leaves its work, and its
operation, to the other, which goes on with it exactly once; while one holds an instance the
other's requests on it are refused; a control plane that restarts interrupts only its own
operations."""

from __future__ import annotations

import asyncio
import time

import pytest

from gureum.errors import Conflict
from gureum.model.operation import Operation, OpStatus
from gureum.service.operations import OpContext, OperationManager
from gureum.service.work_runner import WorkRunner
from gureum.store.db import Database
from gureum.store.operations import OperationStore
from gureum.store.work import DONE, WorkQueue

LEASE_S = 3.0


@pytest.fixture
def queue(db: Database) -> WorkQueue:
    db.migrate()
    return WorkQueue(db)


def _plane(queue: WorkQueue, name: str) -> WorkRunner:
    return WorkRunner(queue, OperationManager(OperationStore(queue.db), owner=name), name, LEASE_S)


def test_work_a_dead_control_plane_left_is_finished_once_by_another(queue: WorkQueue) -> None:
    a, b, c = _plane(queue, "cp-a"), _plane(queue, "cp-b"), _plane(queue, "cp-c")
    resumed: list[str] = []

    async def resume(instance_id: str, ctx: OpContext) -> dict[str, object]:
        resumed.append(instance_id)
        ctx.progress("booted")
        return {"booted": instance_id}

    b.resumes("launch", resume)
    c.resumes("launch", resume)
    started = asyncio.Event()

    async def main() -> str:
        async def launch(ctx: OpContext) -> dict[str, object]:
            async def work() -> dict[str, object]:
                started.set()
                await asyncio.Event().wait()  # a QEMU that takes its time, then cp-a dies
                return {}

            return await a.run("h2", "launch", "i-1", ctx, work)

        op = a.ops.start("launch", "i-1", launch, "p-1")
        await started.wait()
        # cp-a's work is under way: cp-b acts on nothing of it, and cannot start its own.
        assert b.take_over(["h2"]) == []
        with pytest.raises(Conflict, match="another control plane is acting on web"):
            b.check_free("i-1", "web")
        # cp-a dies: its task ends without a word (no finish), its renewals stop.
        for task in list(a.ops._tasks):
            task.cancel()
        await asyncio.sleep(LEASE_S + 0.5)
        # Two control planes look at once: one takes it over, the other finds nothing.
        taken = b.take_over(["h2"]) + c.take_over(["h2"])
        assert taken == ["launch of i-1 on h2"]
        doer = b if b.ops._tasks else c
        await asyncio.gather(*doer.ops._tasks)
        return op.id

    op_id = asyncio.run(main())
    assert resumed == ["i-1"]
    (item,) = queue.list("h2")
    assert (item.state, item.attempts, item.result) == (DONE, 2, {"booted": "i-1"})
    op = OperationStore(queue.db).get(op_id)
    assert op is not None and op.status == OpStatus.SUCCEEDED and op.result == {"booted": "i-1"}
    assert op.owner in ("cp-b", "cp-c") and op.project_id == "p-1"
    messages = [p.message for p in op.progress]
    assert messages[0].startswith(f"taken over by control plane {op.owner}")
    assert messages[-1] == "booted"
    assert queue.held_by_others("anyone") == set()  # the instance's lease went with the work


def test_a_refusal_is_recorded_and_the_instance_is_free_again(queue: WorkQueue) -> None:
    a, b = _plane(queue, "cp-a"), _plane(queue, "cp-b")

    async def main() -> Operation:
        async def fails() -> dict[str, object]:
            raise Conflict("no room on h2")

        op = a.ops.start("start", "i-1", lambda ctx: a.run("h2", "start", "i-1", ctx, fails))
        return await a.ops.finished(op.id, 10)

    op = asyncio.run(main())
    assert op.status == OpStatus.FAILED and op.error == {"code": "conflict",
                                                         "message": "no room on h2"}  # fmt: skip
    (item,) = queue.list("h2")
    assert item.result == {"error": {"code": "conflict", "message": "no room on h2"}}
    b.check_free("i-1", "web")  # nobody holds it


def test_a_restarted_control_plane_interrupts_only_its_own_operations(queue: WorkQueue) -> None:
    store = OperationStore(queue.db)
    now = time.time()
    store.insert(Operation("op-a", "launch", "i-1", OpStatus.RUNNING, now, owner="cp-a"))
    store.insert(Operation("op-b", "launch", "i-2", OpStatus.RUNNING, now, owner="cp-b"))
    store.insert(Operation("op-old", "stop", "i-3", OpStatus.RUNNING, now))  # from before owners
    assert OperationManager(store, owner="cp-a").interrupt_stale() == 2
    assert [store.get(o).status for o in ("op-a", "op-b", "op-old")] == [
        OpStatus.FAILED, OpStatus.RUNNING, OpStatus.FAILED
    ]  # fmt: skip


def test_work_left_too_often_is_given_up_and_its_operation_ended(queue: WorkQueue) -> None:
    """Work that control planes kept leaving is not tried forever, and the operation it began
    is ended as failed with the reason (no other control plane would ever end it)."""
    from gureum.service import work_runner

    store = OperationStore(queue.db)
    store.insert(Operation("op-1", "launch", "i-1", OpStatus.RUNNING, time.time(), owner="cp-a"))
    b = _plane(queue, "cp-b")
    b.resumes("launch", lambda instance_id, ctx: asyncio.sleep(0, {}))  # type: ignore[arg-type]
    item = queue.submit("h2", "launch", {"operation": "op-1"}, "i-1", "cp-a", 0.001)
    assert item is not None
    for attempt in range(work_runner.MAX_ATTEMPTS - 1):  # each claimer dies in turn
        time.sleep(0.01)
        assert queue.claim("h2", f"cp-{attempt}", 0.001) is not None
    time.sleep(0.01)
    assert asyncio.run(_take_over(b)) == []  # not gone on with
    op = store.get("op-1")
    assert op is not None and op.status == OpStatus.FAILED
    assert op.error == {"code": "interrupted",
                        "message": "given up after 3 control planes left it"}  # fmt: skip
    assert queue.get(item.id).state == "failed"


async def _take_over(plane: WorkRunner) -> list[str]:
    return plane.take_over(["h2"])


def test_a_delete_holds_the_instance_against_other_control_planes(queue: WorkQueue) -> None:
    a, b = _plane(queue, "cp-a"), _plane(queue, "cp-b")

    async def main() -> None:
        async with a.holding("h2", "delete", "i-1", "web"):
            with pytest.raises(Conflict, match="another control plane is acting on web"):
                async with b.holding("h2", "delete", "i-1", "web"):
                    pass
            b.check_free("i-2", "other")  # only that one is held
        b.check_free("i-1", "web")  # let go once the delete is done

    asyncio.run(main())
