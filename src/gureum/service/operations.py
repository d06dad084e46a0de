"""Running long work as operations: recorded, followed, waited on.

An operation's every step is written to the store as it happens, so a client can follow it, and
a service restart can tell which operations it cut short (they are marked failed with code
``interrupted`` rather than left "running" forever).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gureum.errors import GureumError, NotFound, Timeout
from gureum.ids import new_id
from gureum.model.operation import Operation, OpStatus, Progress
from gureum.service.events import EventBus
from gureum.store.operations import OperationStore

log = logging.getLogger(__name__)


class OpContext:
    """Handed to the work function: how it reports progress."""

    def __init__(self, manager: OperationManager, op: Operation) -> None:
        self._manager = manager
        self.op = op

    def progress(self, message: str, fraction: float | None = None) -> None:
        self._manager.progress(self.op, message, fraction)

    def progress_threadsafe(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[str, float | None], None]:
        """A progress function callable from a worker thread."""

        def report(message: str, fraction: float | None = None) -> None:
            loop.call_soon_threadsafe(self.progress, message, fraction)

        return report


class Reporter(Protocol):
    """Where long work reports progress: an operation, or nowhere."""

    def progress(self, message: str, fraction: float | None = None) -> None: ...


class Quiet:
    """Progress that goes nowhere: for work run inside another operation or a request."""

    def progress(self, message: str, fraction: float | None = None) -> None:
        pass


Work = Callable[[OpContext], Awaitable[dict[str, object] | None]]


class OperationManager:
    def __init__(
        self, store: OperationStore, events: EventBus | None = None, owner: str | None = None
    ) -> None:
        self.store = store
        # This control plane's name: its operations are its own, and a restart interrupts
        # only those (another control plane's, in a cluster, are that one's to end).
        self.owner = owner
        self.events = events or EventBus()
        self._live: dict[str, Operation] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def interrupt_stale(self) -> int:
        """Mark operations a previous process of this control plane left running as failed
        (work on a joined host's instance is finished by whichever control plane takes it
        over, and its operation then ends as that work did: ``resume``)."""
        stale = self.store.list_running(self.owner or "")
        for op in stale:
            op.status = OpStatus.FAILED
            op.finished_at = time.time()
            op.error = {
                "code": "interrupted",
                "message": "the service stopped before this operation finished",
            }
            self.store.save(op)
        return len(stale)

    def start(
        self,
        kind: str,
        target: str,
        work: Work,
        project_id: str | None = None,
        *,
        then: Callable[[], object] | None = None,
    ) -> Operation:
        """Run ``work`` as an operation. ``then`` is called once it has ended, however it ended
        (at once if it cannot start): releasing what was held for it, say."""
        op = Operation(
            id=new_id("op-"),
            kind=kind,
            target=target,
            status=OpStatus.RUNNING,
            created_at=time.time(),
            project_id=project_id,
            owner=self.owner,
        )
        try:
            self.store.insert(op)
        except BaseException:
            if then is not None:
                then()
            raise
        return self._begin(op, work, then)

    def resume(self, op_id: str, work: Work, why: str) -> Operation | None:
        """Go on with an operation another control plane began and left (it stopped
        answering): it is this one's now, running again if it was marked interrupted, and
        ends as ``work`` does. None if the store has no such operation."""
        op = self.store.get(op_id)
        if op is None:
            return None
        op.status, op.error, op.finished_at, op.owner = OpStatus.RUNNING, None, None, self.owner
        self.store.save(op)
        self._begin(op, work, None)
        self.progress(op, why)
        return op

    def fail(self, op_id: str, code: str, message: str) -> None:
        """End, as failed, an operation another control plane began and left, whose work is
        given up (nobody else would ever end it)."""
        op = self.store.get(op_id)
        if op is None or op.done:
            return
        op.status, op.finished_at = OpStatus.FAILED, time.time()
        op.error, op.owner = {"code": code, "message": message}, self.owner
        self.store.save(op)
        self._publish(op)

    def _begin(self, op: Operation, work: Work, then: Callable[[], object] | None) -> Operation:
        self._live[op.id] = op
        self._changed[op.id] = asyncio.Event()
        self._publish(op)
        task = asyncio.create_task(self._run(op, work, then), name=f"op-{op.kind}-{op.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    async def _run(self, op: Operation, work: Work, then: Callable[[], object] | None) -> None:
        try:
            op.result = await work(OpContext(self, op))
            op.status = OpStatus.SUCCEEDED
        except GureumError as exc:
            op.status = OpStatus.FAILED
            op.error = {"code": exc.code, "message": exc.message}
        except asyncio.CancelledError:
            op.status = OpStatus.FAILED
            op.error = {"code": "interrupted", "message": "the service is shutting down"}
        except Exception as exc:
            log.exception("operation %s (%s) failed", op.id, op.kind)
            op.status = OpStatus.FAILED
            op.error = {"code": "internal", "message": f"internal error: {exc!r}"}
        finally:
            if then is not None:
                then()
        op.finished_at = time.time()
        try:
            self.store.save(op)
        finally:
            self._live.pop(op.id, None)
            self._notify(op.id, final=True)
            self._publish(op)

    def progress(self, op: Operation, message: str, fraction: float | None = None) -> None:
        op.progress.append(Progress(at=time.time(), message=message, fraction=fraction))
        self.store.save(op)
        self._notify(op.id)
        self._publish(op, message)

    def _publish(self, op: Operation, progress: str | None = None) -> None:
        """An operation started, said how it goes, or ended (its project's stream; the
        host's own operations, image builds, have none: administrators see those)."""
        said: dict[str, object] = {"progress": progress} if progress is not None else {}
        if op.error is not None:
            said["error"] = op.error
        self.events.publish("operation", op.project_id, operation_id=op.id, operation=op.kind,
                            target=op.target, status=op.status.value, **said)  # fmt: skip

    def _notify(self, op_id: str, final: bool = False) -> None:
        event = self._changed.pop(op_id, None) if final else self._changed.get(op_id)
        if event is not None:
            event.set()
        if not final and op_id in self._live:
            self._changed[op_id] = asyncio.Event()

    def list(
        self,
        *,
        limit: int,
        target: str | None = None,
        project_id: str | None = None,
        unowned: bool = False,
    ) -> builtins.list[Operation]:
        """``unowned``: with the operations of no project (image builds and checks)."""
        return self.store.list(limit=limit, target=target, project_id=project_id, unowned=unowned)

    def get(self, op_id: str, project_id: str | None = None) -> Operation:
        """``project_id``: only an operation of that project (another's is "not found");
        operations of no project (image builds) are everyone's to follow."""
        op = self._live.get(op_id) or self.store.get(op_id)
        if op is None or (project_id is not None and op.project_id not in (None, project_id)):
            raise NotFound(f"no operation {op_id!r}")
        return op

    def running(self, kind: str, target: str) -> Operation | None:
        for op in self._live.values():
            if op.kind == kind and op.target == target:
                return op
        return None

    async def wait(
        self, op_id: str, *, timeout: float, progress_after: int = 0, project_id: str | None = None
    ) -> Operation:
        """Return when the operation is done, or has progress beyond ``progress_after``, or
        ``timeout`` passes: a long poll, answered the moment something happens."""
        op = self.get(op_id, project_id)
        if op.done or len(op.progress) > progress_after:
            return op
        event = self._changed.get(op_id)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return self.get(op_id)

    async def finished(self, op_id: str, timeout: float) -> Operation:
        """The operation once it has ended; Timeout if it has not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        op = self.get(op_id)
        while not op.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"operation {op_id} did not finish in {timeout:g} s")
            op = await self.wait(op_id, timeout=min(left, 5), progress_after=len(op.progress))
        return op

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
