"""Making the store agree with the host, at start-up and continuously.

The store holds what users asked for, the host what really runs. At start-up every VM that
should be running is looked for: a live QEMU is re-adopted (monitor, console and agent
reconnected), a dead one is marked crashed, or stopped if its guest powered itself off. Anything
on the host that belongs to no instance is removed. Then a loop keeps watching; exits are events
(pidfd) and the loop is only a safety net for any that were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gureum.errors import GureumError
from gureum.model.instance import ACTIVE, Instance, State
from gureum.service.instances import InstanceService, _Events
from gureum.service.operations import OpContext

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, instances: InstanceService, interval_s: float) -> None:
        self.instances = instances
        self.host = instances.host
        self.store = instances.store
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, list[str]]:
        report = await self.reconcile_once()
        self._task = asyncio.create_task(self._loop(), name="reconciler")
        return report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.host.check_alive()
            except Exception:
                log.exception("reconciler pass failed")

    async def reconcile_once(self) -> dict[str, list[str]]:
        report: dict[str, list[str]] = {"adopted": [], "marked": [], "removed": []}
        for inst in self.store.list():
            try:
                await self._reconcile(inst, report)
            except GureumError as exc:
                log.error("cannot reconcile %s: %s", inst.name, exc.message)
                if inst.state in ACTIVE:
                    self.instances._set_state(inst, State.ERROR, f"cannot re-adopt: {exc.message}")
        report["removed"] = await self.host.remove_leftovers({i.id for i in self.store.list()})
        for line in report["removed"]:
            log.warning("removed leftover %s", line)
        return report

    async def _reconcile(self, inst: Instance, report: dict[str, list[str]]) -> None:
        pid = self.host.find_running(inst.id)
        if inst.state not in ACTIVE:
            if pid is not None:
                # Nothing should run for a VM the store says is down: the store is the intent.
                await self.host.kill(inst.id)
                report["marked"].append(f"{inst.name}: killed QEMU of a {inst.state.value} VM")
            return
        if pid is None:
            if inst.state == State.STOPPING or self.host.died_cleanly(inst.id):
                new, why = State.STOPPED, "guest powered off while the service was down"
            elif inst.state == State.RUNNING:
                new, why = State.CRASHED, "QEMU exited while the service was down"
            else:
                new, why = State.ERROR, "start interrupted by a service restart"
            self.instances._set_state(inst, new, why, pid=None)
            report["marked"].append(f"{inst.name}: {new.value}")
            return
        events = _Events(self.instances, inst.id)
        events.boot = inst.boot
        self.instances._events[inst.id] = events
        await self.host.adopt(
            self.instances._vm_spec(inst), pid, events, booted=inst.state == State.RUNNING
        )
        self.store.update(inst.id, pid=pid)
        report["adopted"].append(f"{inst.name} (pid {pid})")
        if inst.state in (State.PENDING, State.STARTING):
            if inst.state == State.PENDING:
                self.instances._set_state(inst, State.STARTING)
            self.instances.ops.start("adopt", inst.id, lambda ctx: self._finish_boot(inst, ctx))
        elif inst.state == State.STOPPING:
            # A stop was under way when the service went down: finish it.
            self.instances.ops.start(
                "stop", inst.id, lambda ctx: self.instances._stop(inst.id, ctx)
            )

    async def _finish_boot(self, inst: Instance, ctx: OpContext) -> dict[str, object]:
        ctx.progress("re-adopted a booting VM after a service restart; waiting for its agent")
        try:
            await self.host.wait_ready(inst.id, self.instances.config.boot_timeout_s)
        except GureumError as exc:
            current = self.store.get(inst.id)
            if current is not None and current.state == State.STARTING:
                await self.host.kill(inst.id)
                self.instances._fail_start(inst.id, exc)
            raise
        current = self.instances.get(inst.id)
        if current.state == State.STARTING:
            self.instances._set_state(current, State.RUNNING)
        return {"instance": self.instances.view(self.instances.get(inst.id))}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
