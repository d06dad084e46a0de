"""Work on joined hosts' instances, done through the store's work queue (issue 17, part 2).

A control plane that launches, starts, stops or restarts an instance on a joined host first
records the work in the queue (``store/work.py``), claimed by itself together with the
instance's lease, then does it at once, renewing both while it works. Should it die, its claim
runs out after ``work_lease_s`` and another control plane's reconciler pass takes the work over
(``take_over``): it goes on from what the host and the store say was done (``resumes``) and ends
the operation the first one began, as that operation.

While one control plane holds an instance no other acts on it: another's request is refused
(``Conflict``, before its operation starts) and its reconciler leaves the instance alone.

The control plane's own host is not queued: only the process that runs it can drive it (its
QEMUs are that process's children), so there is nobody to hand its work to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from gureum.errors import Conflict, GureumError
from gureum.ids import new_id
from gureum.service.operations import OpContext, OperationManager
from gureum.store.work import WorkItem, WorkQueue

log = logging.getLogger(__name__)

# Going on with left work: (instance id, the operation's context) -> its result.
Resume = Callable[[str, OpContext], Awaitable[dict[str, object]]]
Result = dict[str, object]
MAX_ATTEMPTS = 3  # work that took down (or outlived) this many control planes is given up


def _busy(name: str) -> Conflict:
    return Conflict(f"another control plane is acting on {name} now; try again when it is done")


def _error(exc: GureumError) -> dict[str, object]:
    return {"error": {"code": exc.code, "message": exc.message}}


class WorkRunner:
    def __init__(self, queue: WorkQueue, ops: OperationManager, name: str, lease_s: float) -> None:
        self.queue, self.ops, self.name, self.lease_s = queue, ops, name, lease_s
        # A claim is this process's, not its host's: a control plane restarted within its
        # lease must not renew the claims of its earlier process, which nobody is doing.
        self.owner = f"{name}/{new_id('cp-')}"
        self.resumers: dict[str, Resume] = {}
        self._held = 0  # work items this process is doing now
        self._renewer: asyncio.Task[None] | None = None

    def resumes(self, kind: str, resume: Resume) -> None:
        """How work of ``kind`` another control plane left is gone on with."""
        self.resumers[kind] = resume

    def check_free(self, instance_id: str, name: str) -> None:
        """Conflict if another control plane is acting on the instance now."""
        if instance_id in self.queue.held_by_others(self.owner):
            raise _busy(name)

    def held_by_others(self) -> set[str]:
        return self.queue.held_by_others(self.owner)

    async def run(
        self,
        host: str,
        kind: str,
        instance_id: str,
        ctx: OpContext,
        work: Callable[[], Awaitable[Result]],
    ) -> Result:
        """Do ``work`` (the operation ``ctx`` is of) as queued work on ``host``'s instance."""
        item = self.queue.submit(
            host, kind, {"operation": ctx.op.id}, instance_id, self.owner, self.lease_s
        )
        if item is None:
            raise Conflict("another control plane is acting on this instance now; try again")
        return await self._do(item, work)

    @contextlib.asynccontextmanager
    async def holding(
        self, host: str, kind: str, instance_id: str, name: str
    ) -> AsyncIterator[None]:
        """Hold the instance for a change made within the block (a delete): no other control
        plane acts on it meanwhile (Conflict if one does now). Left by a control plane that
        dies, it is given up, not gone on with: the block's caller asked, not the store."""
        item = self.queue.submit(host, kind, {}, instance_id, self.owner, self.lease_s)
        if item is None:
            raise _busy(name)
        async with self._claimed(item):
            yield

    async def _do(self, item: WorkItem, work: Callable[[], Awaitable[Result]]) -> Result:
        async with self._claimed(item) as out:
            out.update(await work())
        return out

    @contextlib.asynccontextmanager
    async def _claimed(self, item: WorkItem) -> AsyncIterator[Result]:
        """While the block does the item's work, its claim is renewed; then its end is
        recorded: what the block put in the yielded result, or the block's error."""
        self._held += 1
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="work-renew")
        out: Result = {}
        try:
            yield out
        except GureumError as exc:
            self.queue.finish(item.id, self.owner, _error(exc), failed=True)
            raise
        except asyncio.CancelledError:
            # This control plane is stopping: the claim is left to run out, and another (or
            # this one, started again) takes the work over.
            raise
        except Exception as exc:
            message = {"error": {"code": "internal", "message": f"internal error: {exc!r}"}}
            self.queue.finish(item.id, self.owner, message, failed=True)
            raise
        else:
            self.queue.finish(item.id, self.owner, out)
        finally:
            self._held -= 1
            if not self._held and self._renewer is not None:
                self._renewer.cancel()  # nothing left to renew: no task outlives the work
                self._renewer = None

    async def _renew(self) -> None:
        """While this process does queued work: its claims and leases renewed a third of the
        way through, so that they never run out while it lives."""
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            try:
                self.queue.renew(self.owner, self.lease_s)
            except Exception:  # the store away a moment: the next renewal may still be in time
                log.exception("could not renew this control plane's work claims")

    def take_over(self, hosts: list[str]) -> list[str]:
        """Each reconciler pass: claim the work other control planes left on these hosts
        (their claims ran out) and go on with it, each under the operation it began; what was
        taken over."""
        taken = []
        for host in hosts:
            while (item := self.queue.claim(host, self.owner, self.lease_s)) is not None:
                what = f"{item.kind} of {item.instance_id} on {host}"
                resume = self.resumers.get(item.kind)
                op_id = item.payload.get("operation")
                op_id = op_id if isinstance(op_id, str) else None
                if resume is None or item.instance_id is None or item.attempts > MAX_ATTEMPTS:
                    why = (
                        f"given up after {item.attempts - 1} control planes left it"
                        if resume is not None and item.instance_id is not None
                        else f"no control plane here can go on with {item.kind}"
                    )
                    self.queue.finish(item.id, self.owner,
                                      {"error": {"code": "interrupted", "message": why}},
                                      failed=True)  # fmt: skip
                    if op_id is not None:  # nobody else would ever end it
                        self.ops.fail(op_id, "interrupted", why)
                    log.error("%s: %s", what, why)
                    continue
                work = partial(self._resume, item, resume)
                why = (
                    f"taken over by control plane {self.name}: the one doing it stopped "
                    f"renewing its claim (try {item.attempts})"
                )
                op = self.ops.resume(op_id, work, why) if op_id is not None else None
                if op is None:
                    self.ops.start(item.kind, item.instance_id, work)
                log.warning("%s: %s", what, why)
                taken.append(what)
        return taken

    async def _resume(self, item: WorkItem, resume: Resume, ctx: OpContext) -> Result:
        assert item.instance_id is not None
        return await self._do(item, partial(resume, item.instance_id, ctx))
