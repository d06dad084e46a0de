"""Making the store agree with the host, at start-up and continuously.

The store holds what users asked for, the host what really runs. At start-up every instance is
reconciled (``Lifecycle.recover``: re-adopt, mark crashed or stopped, kill strays), then
anything on the host that belongs to no instance is removed. A loop then keeps watching; exits
are events (pidfd) and the loop is only a safety net for any that were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gureum.errors import GureumError
from gureum.host.interface import HostAgent
from gureum.model.instance import ACTIVE
from gureum.service.disks import DiskLayers
from gureum.service.instances import InstanceService
from gureum.service.lifecycle import Lifecycle
from gureum.service.work_runner import WorkRunner

log = logging.getLogger(__name__)


CHORES_EVERY_S = 3600.0


class Reconciler:
    def __init__(
        self,
        instances: InstanceService,
        lifecycle: Lifecycle,
        disks: DiskLayers,
        host: HostAgent,
        interval_s: float,
        chores: list[Callable[[], object]] | None = None,
        heartbeat: Callable[[], object] | None = None,
        joined: Callable[[], list[str]] | None = None,
        work: WorkRunner | None = None,
    ) -> None:
        self.work = work  # joined hosts' work other control planes left: taken over each pass
        self.instances = instances
        self.lifecycle = lifecycle
        self.disks = disks
        self.host = host
        # Housekeeping of the store (audit retention...): at start, then hourly.
        self.chores = chores or []
        self._chores_done = 0.0
        self.heartbeat = heartbeat  # each pass: this host says it is alive
        self.joined = joined  # each pass: the joined hosts to keep in step (Lifecycle.converge)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, list[str]]:
        report = await self.reconcile_once()
        self.run_chores()
        self._task = asyncio.create_task(self._loop(), name="reconciler")
        return report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.heartbeat is not None:
                    self.heartbeat()
                await self.host.check_alive()
                for name in await self.lifecycle.resume_paused():
                    log.info("%s resumed: the host's disk has room again", name)
                await self.converge_joined()
            except Exception:
                log.exception("reconciler pass failed")
            if time.monotonic() - self._chores_done >= CHORES_EVERY_S:
                self.run_chores()

    def run_chores(self) -> None:
        self._chores_done = time.monotonic()
        for chore in self.chores:
            try:
                chore()
            except Exception:
                log.exception("housekeeping failed")

    async def converge_joined(self) -> list[str]:
        """Each joined host's instances brought in step with what runs there; what changed
        (a host that cannot be asked now is tried again next pass)."""
        changes: list[str] = []
        hosts = self.joined() if self.joined is not None else []
        if not hosts:
            return changes
        busy = self.work.held_by_others if self.work is not None else None
        for host in hosts:
            try:
                changes += await self.lifecycle.converge(host, busy)
            except GureumError as exc:
                log.warning("cannot compare %s's instances with what runs there: %s", host,
                            exc.message)  # fmt: skip
        if self.work is not None:
            changes += [f"took over the {what}" for what in self.work.take_over(hosts)]
        return changes

    async def reconcile_once(self) -> dict[str, list[str]]:
        report: dict[str, list[str]] = {"changed": [], "removed": []}
        report["changed"] += self.disks.settle_base_images()
        for inst in self.instances.list():
            try:
                change = await self.lifecycle.recover(inst)
            except GureumError as exc:
                log.error("cannot reconcile %s: %s", inst.name, exc.message)
                if inst.state in ACTIVE:
                    reason = f"cannot re-adopt: {exc.message}"
                    await self.lifecycle.mark_error(inst.id, reason)
                change = f"{inst.name}: error ({exc.message})"
            if change:
                report["changed"].append(change)
        report["changed"] += await self.converge_joined()
        for line in await self.instances.drop_internal_snapshots():
            report["changed"].append(line)
        known = {i.id for i in self.instances.list()}
        layers = self.disks.known_files()
        snapshots = {s.id for s in self.disks.snapshots.list()}
        report["removed"] = await self.host.remove_leftovers(known, layers, snapshots)
        report["removed"] += [f"disk layer {lid}" for lid in await self.disks.collect()]
        for line in report["removed"]:
            log.warning("removed leftover %s", line)
        return report

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
