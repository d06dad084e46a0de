"""A VM's life on its host: boot and readiness, stop, engine events, and re-adoption.

Each VM's host-side actions run under its own lock (``lock``); the (slow) wait for a guest to
become ready does not hold it, so a stop or a forced delete can interrupt a boot. The states
and which action may start from which are in ``model/instance.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gureum.config import Config
from gureum.errors import GureumError, InvalidState, NotFound, found
from gureum.host.interface import Identity, VMSpec
from gureum.host.remote import RemoteHostAgent, Running
from gureum.model.hardware import Hardware, new_generation_id
from gureum.model.instance import ACTIVE, BootTimeline, Instance, State, check_transition
from gureum.service.disks import DiskLayers
from gureum.service.events import EventBus, publish_state
from gureum.service.host_router import HostRouter
from gureum.service.networks import NetworkService
from gureum.service.operations import OpContext, OperationManager, Reporter
from gureum.service.views import InstanceViews
from gureum.store.instances import InstanceStore
from gureum.units import GIB, MIB

log = logging.getLogger(__name__)


# Free bytes on the host's disk before VMs paused on a full disk are resumed.
RESUME_FREE_BYTES = 64 * MIB


BOOT_LABELS = {
    "taken_from_pool": "a waiting QEMU taken from the pool",
    "process_started": "QEMU started",
    "memory_restored": "memory and device state restored",
    "running": "vCPUs running",
    "kernel_started": "kernel started",
    "init_started": "init started",
    "agent_ready": "guest agent ready",
    "identity_refreshed": "guest told it is a new machine",
    "network_up": "the guest has its DHCP lease",
}
# A container's timeline: the same events, from runc and its init.
CONTAINER_LABELS = {
    **BOOT_LABELS,
    "process_started": "container created (runc)",
    "running": "container started",
    "agent_ready": "its init is ready",
}


class _Events:
    """Receives one VM's engine events and turns them into state and progress."""

    def __init__(self, service: Lifecycle, instance_id: str, *, container: bool = False) -> None:
        self.service = service
        self.instance_id = instance_id
        self.labels = CONTAINER_LABELS if container else BOOT_LABELS
        self.ctx: Reporter | None = None
        self.boot = BootTimeline()

    def on_boot_event(self, event: str, at: float) -> None:
        if not self.boot.mark(event, at):
            return
        self.service.store.update(self.instance_id, boot=self.boot)
        if self.ctx is not None:
            start = self.boot.taken_from_pool or self.boot.process_started or at
            self.ctx.progress(f"{self.labels[event]} (+{at - start:.2f} s)")

    def on_exit(self, how: str, detail: str) -> None:
        self.service.on_exit(self.instance_id, how, detail)

    def on_paused(self, reason: str) -> None:
        self.service.on_paused(self.instance_id, reason)

    def on_resumed(self) -> None:
        self.service.on_resumed(self.instance_id)


class Lifecycle:
    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        host: HostRouter,
        ops: OperationManager,
        disks: DiskLayers,
        networks: NetworkService,
        views: InstanceViews,
        events: EventBus,
    ) -> None:
        self.config = config
        self.events = events
        self.store = store
        self.host = host
        self.ops = ops
        self.disks = disks
        self.networks = networks
        self.views = views
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._events: dict[str, _Events] = {}

    def get(self, instance_id: str) -> Instance:
        return found(self.store.get(instance_id), f"instance {instance_id}")

    def lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def forget_lock(self, instance_id: str) -> None:
        self._locks.pop(instance_id, None)
        self._events.pop(instance_id, None)

    def vm_spec(self, inst: Instance, hardware: Hardware | None = None) -> VMSpec:
        hw = hardware or inst.hardware
        assert hw is not None
        chain: tuple[Path, ...]
        if inst.is_container:  # the image's files, unpacked from its disk, under its own layer
            boot, chain = None, (self.disks.image_disk(inst),)
        else:
            assert inst.root_layer is not None
            boot, chain = self.disks.boot_files(inst), self.disks.chain(inst.root_layer)
        return VMSpec(
            instance_id=inst.id,
            name=inst.spec.name,
            hardware=hw,
            project_id=inst.project_id,
            uid=inst.uid,
            kernel=boot[0] if boot else None,
            initrd=boot[1] if boot else None,
            disk_chain=chain,
            kind=inst.kind,
            layer_bytes=inst.spec.disk_bytes if inst.is_container else 0,
        )

    def set_state(
        self, inst: Instance, state: State, reason: str | None = None, **fields: object
    ) -> None:
        check_transition(inst.state, state, name=inst.name)
        inst.state = state
        inst.state_reason = reason
        self.store.update(inst.id, state=state, state_reason=reason, **fields)
        publish_state(self.events, inst)

    async def boot(
        self,
        instance_id: str,
        ctx: Reporter,
        *,
        fresh: bool = False,
        restore_from: str | None = None,
        identity: Identity | None = None,
        keep_memory: bool = False,
    ) -> dict[str, object]:
        """Start the VM's QEMU and wait for its agent: a cold boot, or with ``restore_from`` (a
        snapshot id) a resume from its memory image (the caller has set the hardware and top
        layer). With ``identity`` the guest is told it is a new machine (clone) once it
        answers."""
        async with self.lock(instance_id):
            inst = self.store.get(instance_id)
            if inst is None:
                raise NotFound("the instance was deleted")
            events = _Events(self, instance_id, container=inst.is_container)
            try:
                if not self.host.is_local(inst.host):
                    ctx.progress(f"on joined host {inst.host}: its copy of the image")
                    await self.disks.bring_image(inst)
                if fresh and not inst.is_container:
                    ctx.progress(
                        f"creating root disk ({inst.spec.disk_bytes / GIB:g} GiB, thin overlay)"
                    )
                    await self.disks.new_top(inst, on=None, size_bytes=inst.spec.disk_bytes)
                assert inst.hardware is not None
                hardware = inst.hardware
                if inst.uid is None:  # made before VMs had users of their own
                    inst.uid = self.store.next_uid()
                    self.store.update(inst.id, uid=inst.uid)
                if restore_from is None:
                    # A cold boot folds hot-plugged parts and pending resizes into the base.
                    hardware = hardware.rebooted(
                        inst.spec.cpus, inst.spec.memory_mib, self.networks.hardware_nics(inst.id)
                    )
                events.ctx = ctx
                self._events[instance_id] = events
                spec = self.vm_spec(inst, hardware)
                # DHCP must know the NICs' MACs, and the firewall their TAPs, before they speak;
                # meanwhile a QEMU the pool started for this VM is readied.
                await asyncio.gather(
                    self.networks.sync_instance(inst.id), self.host.claim_waiting(spec, events)
                )
                self.set_state(inst, State.STARTING, boot="{}", pid=None, hardware=hardware)
                inst.hardware = hardware
                pid = await self.host.start(
                    spec, events, restore_from=restore_from, keep_memory=keep_memory
                )
                if inst.is_container:
                    self.store.update(instance_id, pid=pid, accel=None)
                    ctx.progress(f"container's init running as host pid {pid}")
                else:
                    accel = self.host.on(inst.host).accel.accel
                    self.store.update(instance_id, pid=pid, accel=accel)
                    where = "" if self.host.is_local(inst.host) else f" on {inst.host}"
                    ctx.progress(f"QEMU running as pid {pid}{where} ({accel})")
            except GureumError as exc:
                self._fail_start(instance_id, exc)
                raise
        return await self._await_ready(
            instance_id,
            events,
            ctx,
            refresh=restore_from is not None or identity is not None,
            identity=identity,
        )

    async def resume_boot(self, instance_id: str, ctx: OpContext) -> dict[str, object]:
        """Go on with a boot of a joined host's instance that another control plane began and
        left (a launch, start or restart; ``service/work_runner.py``), from what the host and
        the store say was done: a QEMU the agent runs for it is adopted and waited on, and
        none is started twice; with none, it is booted (its disk made if it has none yet)."""
        async with self.lock(instance_id):
            inst = self.get(instance_id)
            if inst.state == State.STOPPING:  # a stop was under way: it is finished first
                await self.stop_locked(instance_id, ctx)
                inst = self.get(instance_id)
            if inst.state in (State.RUNNING, State.PAUSED):
                return {"instance": self.views.view(inst), "how": "it was running already"}
            assert inst.host is not None  # a joined host's: its work is queued
            remote = self.host.remote(inst.host)
            seen = await remote.running([inst.id])
            pid = seen.pids.get(inst.id)
            if pid is not None:
                events = _Events(self, inst.id)
                events.boot = inst.boot
                self._events[inst.id] = events
                await remote.adopt(self.vm_spec(inst), pid, events, booted=False)
                self.set_state(inst, State.STARTING, pid=pid)
                ctx.progress(f"its QEMU (pid {pid} on {remote.name}) was started: waiting on it")
        if pid is not None:
            return await self._await_ready(instance_id, events, ctx)
        if inst.state == State.STARTING:  # its QEMU never started, or ended: boot it again
            self.set_state(inst, State.ERROR, "its boot was left by another control plane")
        ctx.progress("no QEMU of it runs: booting it")
        return await self.boot(instance_id, ctx, fresh=inst.root_layer is None)

    async def resume_restart(self, instance_id: str, ctx: OpContext) -> dict[str, object]:
        """A restart another control plane left: stopped (whatever of its stop was done; a
        restart it had finished is done again rather than perhaps not at all), then booted."""
        await self.stop(instance_id, ctx)
        return await self.resume_boot(instance_id, ctx)

    async def _await_ready(
        self,
        instance_id: str,
        events: _Events,
        ctx: Reporter,
        *,
        refresh: bool = False,
        identity: Identity | None = None,
    ) -> dict[str, object]:
        """Wait for the guest agent (outside the VM's lock, so a stop can interrupt)."""
        events.ctx = ctx
        refreshed: dict[str, object] = {}
        try:
            await self.host.wait_ready(instance_id, self.config.boot_timeout_s)
            if self.host.host_of_instance(instance_id) is not None:
                # A joined host's report of the moment may still be on its way: this is when
                # its agent said so (the first of the two is kept).
                events.on_boot_event("agent_ready", time.time())
            if refresh:
                # Restored or cloned: the guest's random pool and machine id were someone
                # else's a moment ago (and for a clone, its hostname and MACs too).
                told = identity or Identity()
                machine_id = await self.host.refresh_identity(instance_id, told)
                events.on_boot_event("identity_refreshed", time.time())
                refreshed = {"machine_id": machine_id, **told.to_dict()}
                ctx.progress(
                    "guest identity refreshed (random seed, machine id"
                    + (", hostname, MAC)" if identity and identity.to_dict() else ")")
                )
        except GureumError as exc:
            async with self.lock(instance_id):
                inst = self.store.get(instance_id)
                if inst is not None and inst.state == State.STARTING:
                    await self.host.kill(instance_id)
                    self._fail_start(instance_id, exc)
                elif inst is not None:
                    raise InvalidState(
                        f"{inst.name} became {inst.state.value} before it was ready"
                    ) from exc
            raise
        finally:
            events.ctx = None
        inst = self.get(instance_id)
        if inst.state == State.STARTING:
            self.set_state(inst, State.RUNNING)
        ctx.progress(f"ready in {events.boot.to_dict()['total_s']} s")
        result: dict[str, object] = {"instance": self.views.view(self.get(instance_id))}
        if refreshed:
            assert inst.hardware is not None
            result["identity_refreshed"] = {
                **refreshed,
                "generation_id": inst.hardware.generation_id,
            }
        return result

    def _fail_start(self, instance_id: str, exc: GureumError) -> None:
        inst = self.store.get(instance_id)
        self.host.forget(instance_id)
        if inst is not None and not self.host.is_local(inst.host):
            self.disks.forget_images_on(inst.host)
        if inst is not None and inst.state in (State.PENDING, State.STARTING):
            self.set_state(inst, State.ERROR, f"start failed: {exc.message}", pid=None)

    async def mark_error(self, instance_id: str, reason: str) -> None:
        """Give up on a VM the service cannot manage: kill what runs, record why."""
        await self.host.kill(instance_id)
        self.host.forget(instance_id)
        inst = self.store.get(instance_id)
        if inst is not None and inst.state != State.ERROR:
            # Any state may fall to error when the host side is lost.
            self.store.update(instance_id, state=State.ERROR, state_reason=reason, pid=None)
            inst.state, inst.state_reason = State.ERROR, reason
            publish_state(self.events, inst)

    # -- engine events ---------------------------------------------------------------------------
    def on_exit(self, instance_id: str, how: str, detail: str) -> None:
        inst = self.store.get(instance_id)
        self._events.pop(instance_id, None)
        if inst is None:
            return
        if inst.state in (State.RUNNING, State.PAUSED):
            new = State.STOPPED if how == "stopped" else State.CRASHED
            self.set_state(inst, new, detail, pid=None)
            self.host.forget(instance_id)
            # A guest that powered off, or a VM killed on request (a forced delete), is news;
            # only a crash is a warning.
            level = logging.WARNING if new == State.CRASHED else logging.INFO
            log.log(level, "%s (%s) %s: %s", inst.name, inst.id, new.value, detail)
        elif inst.state == State.STOPPING:
            self.set_state(inst, State.STOPPED, detail, pid=None)
        # STARTING: the boot waiter sees the exit and records why the start failed.

    def host_event(self, host: str, instance_id: str, event: str, fields: dict[str, Any]) -> None:
        """An engine event a joined host's agent reported for one of its VMs (the cluster port
        checked each field): taken as this host's engine's would be, and only from the host the
        store places the instance on (another host's word about it is refused, not believed)."""
        inst = self.store.get(instance_id)
        if inst is None or inst.host != host:
            raise NotFound(f"host {host} has no instance {instance_id}")
        pid = fields.get("pid")
        if pid is not None and inst.pid is not None and pid != inst.pid:
            log.info("%s: %s of an earlier run (pid %s) ignored", inst.name, event, pid)
            return
        events = self._events.get(instance_id)
        if events is None:  # not booting now: its timeline as recorded
            events = _Events(self, instance_id)
            events.boot = inst.boot
        if event == "boot":
            events.on_boot_event(fields["name"], fields["at"])
        elif event == "paused":
            events.on_paused(fields["reason"])
        elif event == "resumed":
            events.on_resumed()
        elif event == "exit":
            events.on_exit(fields["how"], fields["detail"])

    def on_paused(self, instance_id: str, reason: str) -> None:
        inst = self.store.get(instance_id)
        if inst is not None and inst.state == State.RUNNING:
            self.set_state(inst, State.PAUSED, reason)
            log.warning("%s (%s) paused: %s", inst.name, inst.id, reason)

    def on_resumed(self, instance_id: str) -> None:
        inst = self.store.get(instance_id)
        if inst is not None and inst.state == State.PAUSED:
            self.set_state(inst, State.RUNNING)
            log.info("%s (%s) resumed", inst.name, inst.id)
            if not self.host.is_local(inst.host):
                return  # no snapshot of it freezes it (not on joined hosts yet): nothing to thaw
            # Paused in the middle of a snapshot's freeze, its thaw may have failed.
            task = asyncio.create_task(self.host.thaw_if_frozen(instance_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def resume_paused(self) -> list[str]:
        """Resume VMs QEMU paused on a full host disk once there is room again (the
        reconciler asks every pass). A VM that fills it again is simply paused again."""
        resumed = []
        paused = [
            i for i in self.store.list() if i.state == State.PAUSED and self.host.is_local(i.host)
        ]
        if paused and self.host.free_disk_bytes() >= RESUME_FREE_BYTES:
            for inst in paused:
                try:
                    await self.host.resume(inst.id)
                except GureumError as exc:
                    log.warning("cannot resume %s: %s", inst.name, exc.message)
                    continue
                resumed.append(inst.name)
        return resumed

    # -- recovery after a service restart -------------------------------------------------------
    async def recover(self, inst: Instance) -> str | None:
        """Make one instance's record agree with its host after a restart; returns what changed.

        A live QEMU of an active VM is re-adopted (and a boot or stop that was under way is
        finished); a dead one is marked crashed, or stopped if its guest powered off; a QEMU
        running for a VM the store says is down is killed (the store holds the intent).
        """
        if not self.host.is_local(inst.host):
            return None  # a joined host's: its agent says what runs there, not this host
        if inst.hardware is None:  # a row from before hardware was recorded
            inst.hardware = Hardware.for_boot(inst.spec.cpus, inst.spec.memory_mib)
            self.store.update(inst.id, hardware=inst.hardware)
        pid = self.host.find_running(inst.id)
        if inst.state not in ACTIVE:
            if pid is None:
                return None
            await self.host.kill(inst.id)
            what = "container" if inst.is_container else "QEMU"
            return f"{inst.name}: killed the {what} of a {inst.state.value} instance"
        if pid is None:
            if inst.state == State.STOPPING or self.host.died_cleanly(inst.id):
                new, why = State.STOPPED, "guest powered off while the service was down"
            elif inst.state == State.RUNNING:
                what = "the container's init" if inst.is_container else "QEMU"
                new, why = State.CRASHED, f"{what} exited while the service was down"
            else:
                new, why = State.ERROR, "start interrupted by a service restart"
            self.set_state(inst, new, why, pid=None)
            return f"{inst.name}: {new.value} ({why})"
        events = _Events(self, inst.id, container=inst.is_container)
        events.boot = inst.boot
        self._events[inst.id] = events
        booted = inst.state in (State.RUNNING, State.PAUSED)
        real_top = await self.host.adopt(self.vm_spec(inst), pid, events, booted=booted)
        self.store.update(inst.id, pid=pid)
        if not inst.is_container:  # a container's own layer is one file the host keeps: no chain
            self._repair_top_layer(inst, real_top)
            assert inst.root_layer is not None
            self.host.update_disk_chain(inst.id, self.disks.chain(inst.root_layer))
        if inst.state in (State.PENDING, State.STARTING):
            if inst.state == State.PENDING:
                self.set_state(inst, State.STARTING)

            async def finish_boot(ctx: OpContext) -> dict[str, object]:
                ctx.progress("re-adopted a booting VM after a service restart")
                return await self._await_ready(inst.id, events, ctx)

            self.ops.start("adopt", inst.id, finish_boot, inst.project_id)
        elif inst.state == State.STOPPING:
            # A stop was under way when the service went down: finish it.
            self.ops.start("stop", inst.id, lambda ctx: self.stop(inst.id, ctx), inst.project_id)
        what = "container init" if inst.is_container else "QEMU"
        return f"{inst.name}: re-adopted {what} pid {pid}"

    async def converge(self, host: str, busy: Callable[[], set[str]] | None = None) -> list[str]:
        """Make the records of a joined host's instances agree with what runs there (each
        reconciler pass while the host reports); what changed. A VM whose QEMU ended unheard
        (its agent was away) is marked stopped or crashed, as ``recover`` does; one its agent no
        longer watches (the agent restarted) is adopted again, so its events flow once more and
        it can be stopped; one that runs although the store says it is down is killed. An
        instance being started or stopped is left to that operation, and one another control
        plane is acting on (``busy``: the instances others hold now) to that one. What runs is
        asked once for all, and again for one about to be changed, with ``busy`` asked again
        too: another control plane may have started or stopped it meanwhile."""
        held = busy() if busy is not None else set()
        placed = [i for i in self.store.list() if i.host == host and i.id not in held]
        if not placed:
            return []
        remote = self.host.remote(host)
        seen = await remote.running([i.id for i in placed])
        changes = []
        for inst in placed:
            async with self.lock(inst.id):
                now = self.store.get(inst.id)
                if now is None or now.host != host or not _astray(now, seen):
                    continue
                seen_now = await remote.running([inst.id])
                now = self.store.get(inst.id)
                if now is None or now.host != host or (busy is not None and inst.id in busy()):
                    continue
                change = await self._converge_one(remote, now, seen_now)
            if change:
                log.info("%s", change)
                changes.append(change)
        return changes

    async def _converge_one(
        self, remote: RemoteHostAgent, inst: Instance, seen: Running
    ) -> str | None:
        """``converge``'s change to one instance (``_astray`` says whether there is one)."""
        pid = seen.pids.get(inst.id)
        if inst.state in (State.RUNNING, State.PAUSED):
            if pid is None:
                if inst.id in seen.clean:
                    new, why = State.STOPPED, f"guest powered off while {remote.name} was away"
                else:
                    new, why = State.CRASHED, f"QEMU exited while {remote.name} was away"
                self._events.pop(inst.id, None)
                self.set_state(inst, new, why, pid=None)
                return f"{inst.name}: {new.value} ({why})"
            if inst.id in seen.watched:
                return None
            events = _Events(self, inst.id)
            events.boot = inst.boot
            self._events[inst.id] = events
            await remote.adopt(self.vm_spec(inst), pid, events, booted=True)
            self.store.update(inst.id, pid=pid)
            return f"{inst.name}: watched again on {remote.name} (pid {pid})"
        if inst.state not in ACTIVE and pid is not None:
            await remote.kill(inst.id)
            return f"{inst.name}: killed the QEMU of a {inst.state.value} instance on {remote.name}"
        return None

    def _repair_top_layer(self, inst: Instance, real_top: Path) -> None:
        """A snapshot cut short by a crash may leave the store one layer ahead of QEMU (the
        new top's record is written before QEMU switches to it): then QEMU still writes the
        layer under the recorded top, and that layer becomes the top again. Nothing else QEMU
        says is believed: a compromised one could name any layer of any VM."""
        recorded = self.disks.store.get(inst.root_layer) if inst.root_layer else None
        if recorded is None or self.host.path(recorded.path) == real_top:
            return
        below = self.disks.store.get(recorded.backing) if recorded.backing else None
        if below is not None and self.host.path(below.path) == real_top:
            log.warning(
                "%s: disk top is %s, not %s; repaired", inst.name, below.id, inst.root_layer
            )
            self.store.update(inst.id, root_layer=below.id)
            inst.root_layer = below.id
        else:
            log.error("%s: QEMU reports %s as its disk; the store's record is kept",
                      inst.name, real_top)  # fmt: skip

    # -- stop ------------------------------------------------------------------------------------
    async def stop(self, instance_id: str, ctx: Reporter) -> dict[str, object]:
        async with self.lock(instance_id):
            return await self.stop_locked(instance_id, ctx)

    async def stop_locked(self, instance_id: str, ctx: Reporter) -> dict[str, object]:
        inst = self.get(instance_id)
        if inst.state not in (State.RUNNING, State.STARTING, State.PAUSED, State.STOPPING):
            return {"instance": self.views.view(inst), "how": "already " + inst.state.value}
        self.set_state(inst, State.STOPPING)
        how_asked = "its init's power-off signal" if inst.is_container else "ACPI"
        ctx.progress(
            f"asking the guest to power off ({how_asked}), {self.config.stop_timeout_s:g} s at most"
        )
        try:
            how = await self.host.stop(instance_id, self.config.stop_timeout_s)
        except InvalidState:
            how = "already gone"
        self.host.forget(instance_id)
        inst = self.get(instance_id)
        if inst.state != State.STOPPED:
            self.set_state(inst, State.STOPPED, "stopped", pid=None)
        messages = {
            "powerdown": "guest powered off",
            "killed": "the container's init was killed (it did not power off)"
            if inst.is_container
            else "QEMU killed (it did not quit)",
            "quit": "QEMU quit (the guest ignored ACPI)",
        }
        ctx.progress(messages.get(how, how))
        return {"instance": self.views.view(inst), "how": how}

    async def kill_locked(self, inst: Instance) -> None:
        """Hard-stop a VM whose state is about to be replaced (restore): nothing to save."""
        if inst.state in (State.RUNNING, State.STARTING, State.PAUSED, State.STOPPING):
            self.set_state(inst, State.STOPPING)
            await self.host.kill(inst.id)
            self.host.forget(inst.id)
            self.set_state(inst, State.STOPPED, "stopped for a restore", pid=None)

    def new_generation(self, hardware: Hardware) -> Hardware:
        return replace(hardware, generation_id=new_generation_id())


def _astray(inst: Instance, seen: Running) -> bool:
    """Whether a joined host's instance's record and what runs there disagree in a way
    ``converge`` mends: it ran and its QEMU is gone or unwatched, or it is down and one runs."""
    pid = seen.pids.get(inst.id)
    if inst.state in (State.RUNNING, State.PAUSED):
        return pid is None or inst.id not in seen.watched
    return inst.state not in ACTIVE and pid is not None
