"""Instance use cases: every rule a user can observe about a VM's life.

Validation and admission happen before anything is created, so bad input leaves nothing behind.
Each VM's host-side actions run under its own lock; the (slow) wait for a guest to become ready
does not hold it, so a stop or a forced delete can interrupt a boot.

A VM's disk is a chain of qcow2 layers (see ``model/snapshot.py``): the instance points at its
top layer; snapshots freeze layers; layers nobody builds on any more are collected.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gureum.config import Config
from gureum.errors import EngineError, GureumError, InvalidInput, InvalidState, NotFound
from gureum.host.agent import Console, LocalHostAgent, VMSpec
from gureum.host.capacity import admit
from gureum.ids import check_name, looks_like_id, new_id
from gureum.model.hardware import MAX_CPUS, MAX_NICS, Hardware, new_generation_id
from gureum.model.instance import (
    ACTIVE,
    DEFAULT_PROJECT,
    BootTimeline,
    Instance,
    InstanceSpec,
    State,
    check_action,
    check_transition,
)
from gureum.model.operation import Operation
from gureum.model.snapshot import UNSETTLED_BASE, Layer
from gureum.service.holds import Holds
from gureum.service.images import ImageService
from gureum.service.networks import DEFAULT_GROUP, DEFAULT_NETWORK, NO_NETWORK, nic_view
from gureum.service.operations import OpContext, OperationManager, Reporter
from gureum.store.instances import InstanceStore
from gureum.store.layers import LayerStore, SnapshotStore
from gureum.units import GIB, MIB

if TYPE_CHECKING:
    from gureum.service.forwards import ForwardService
    from gureum.service.networks import NetworkService
    from gureum.service.quotas import QuotaService
    from gureum.service.secgroups import SecGroupService

log = logging.getLogger(__name__)

HOST = "host"  # the key of what the host holds for growing VMs
MIN_MEMORY_MIB = 128
# Names gureum uses for its own short-lived snapshots (backup export); users cannot take them.
INTERNAL_SNAPSHOT_PREFIX = "gureum-"
MAX_DISK_BYTES = 16 * 1024 * GIB
# Free bytes on the host's disk before VMs paused on a full disk are resumed.
RESUME_FREE_BYTES = 64 * MIB

BOOT_LABELS = {
    "process_started": "QEMU started",
    "memory_restored": "memory and device state restored",
    "kernel_started": "kernel started",
    "init_started": "init started",
    "agent_ready": "guest agent ready",
}


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    image: str
    cpus: int = 1
    memory_mib: int = 256
    disk_bytes: int | None = None  # None: the image's own size
    networks: tuple[str, ...] = ()  # () : the default network
    secgroups: tuple[str, ...] = ()  # () : the default security group
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()


class _Events:
    """Receives one VM's engine events and turns them into state and progress."""

    def __init__(self, service: InstanceService, instance_id: str) -> None:
        self.service = service
        self.instance_id = instance_id
        self.ctx: Reporter | None = None
        self.boot = BootTimeline()

    def on_boot_event(self, event: str, at: float) -> None:
        if not self.boot.mark(event, at):
            return
        self.service.store.update(self.instance_id, boot=self.boot)
        if self.ctx is not None:
            start = self.boot.process_started or at
            self.ctx.progress(f"{BOOT_LABELS[event]} (+{at - start:.2f} s)")

    def on_exit(self, how: str, detail: str) -> None:
        self.service.on_exit(self.instance_id, how, detail)

    def on_paused(self, reason: str) -> None:
        self.service.on_paused(self.instance_id, reason)

    def on_resumed(self) -> None:
        self.service.on_resumed(self.instance_id)


def check_cpus(cpus: object) -> int:
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise InvalidInput(f"cpus must be a whole number from 1 to {MAX_CPUS}, not {cpus!r}")
    return cpus


def check_memory(memory_mib: object) -> int:
    if (
        isinstance(memory_mib, bool)
        or not isinstance(memory_mib, int)
        or memory_mib < MIN_MEMORY_MIB
    ):
        raise InvalidInput(f"memory must be at least {MIN_MEMORY_MIB} MiB, not {memory_mib!r} MiB")
    return memory_mib


def whole_mib(size: int) -> int:
    return (size + MIB - 1) // MIB * MIB


class InstanceService:
    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        images: ImageService,
        host: LocalHostAgent,
        ops: OperationManager,
        layers: LayerStore,
        snapshots: SnapshotStore,
    ) -> None:
        self.config = config
        self.store = store
        self.images = images
        self.host = host
        self.ops = ops
        self.layers = layers
        self.snapshots = snapshots
        self.admission = asyncio.Lock()
        # vCPUs and MiB admitted to running VMs that are still growing into them (a live
        # resize under way), under HOST: the host counts them before the store does.
        self.growing = Holds()
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._events: dict[str, _Events] = {}
        # Wired by Services.build (they need this service's store too).
        self.quotas: QuotaService = None  # type: ignore[assignment]
        self.networks: NetworkService = None  # type: ignore[assignment]
        self.secgroups: SecGroupService = None  # type: ignore[assignment]
        self.forwards: ForwardService = None  # type: ignore[assignment]

    # -- queries ---------------------------------------------------------------------------------
    def list(self, project_id: str | None = None) -> list[Instance]:
        return self.store.list(project_id)

    def get(self, ref: str, project_id: str | None = None) -> Instance:
        """By id, or by name within a project. Another project's instance is "not found",
        exactly like a missing one (``project_id`` None: any, for internal callers)."""
        if looks_like_id(ref, "i-"):
            inst = self.store.get(ref)
            if inst is not None and project_id is not None and inst.project_id != project_id:
                inst = None
        else:
            inst = self.store.get_by_name(ref, project_id or DEFAULT_PROJECT)
        if inst is None:
            raise NotFound(f"no instance named {ref!r}")
        return inst

    def view(self, inst: Instance) -> dict[str, object]:
        return self.views([inst])[0]

    def views(self, insts: builtins.list[Instance]) -> builtins.list[dict[str, object]]:
        """What the API shows of each instance. Related rows (layers, NICs, groups, snapshots)
        are read once for the whole list, not once per instance: a list of 100 is a handful
        of queries, which matters most on a networked store (PostgreSQL)."""
        if not insts:
            return []
        one = insts[0].id if len(insts) == 1 else None
        if one is not None:
            root = insts[0].root_layer
            layer = self.layers.get(root) if root else None
            layers = {root: layer} if root and layer else {}
        else:
            layers = self.layers.all()
        snapshots: dict[str, int] = {}
        for snap in self.snapshots.list(one):
            snapshots[snap.instance_id] = snapshots.get(snap.instance_id, 0) + 1
        nics: dict[str, list[dict[str, object]]] = {}
        groups: dict[str, list[str]] = {}
        first_ip: dict[str, tuple[int, str | None]] = {}  # forwards go to the lowest slot
        if self.networks is not None:
            store = self.networks.store
            for nic, network in store.nics_with_network(one):
                nics.setdefault(nic.instance_id, []).append(nic_view(nic, network))
                if nic.slot < first_ip.get(nic.instance_id, (nic.slot + 1, None))[0]:
                    first_ip[nic.instance_id] = (nic.slot, nic.ip)
            groups = store.group_names_of(one)
        forwards: dict[str, list[dict[str, object]]] = {}
        if self.forwards is not None:
            names = {i.id: i.spec.name for i in insts}
            for fwd in self.forwards.list(one):
                if fwd.instance_id not in names:  # another project's
                    continue
                ip = first_ip.get(fwd.instance_id, (0, None))[1]
                view = self.forwards.view(fwd, name=names[fwd.instance_id], ip=ip)
                forwards.setdefault(fwd.instance_id, []).append(view)
        return [
            self._view(i, layers, snapshots, nics, groups, forwards) for i in insts
        ]  # fmt: skip

    def _view(
        self,
        inst: Instance,
        layers: dict[str, Layer],
        snapshots: dict[str, int],
        nics: dict[str, builtins.list[dict[str, object]]],
        groups: dict[str, builtins.list[str]],
        forwards: dict[str, builtins.list[dict[str, object]]],
    ) -> dict[str, object]:
        spec = inst.spec
        hw = inst.hardware
        running = inst.state in ACTIVE
        pending = {}
        if hw is not None and running:
            if hw.total_cpus != spec.cpus:
                pending["cpus"] = spec.cpus
            if hw.total_memory_mib != spec.memory_mib:
                pending["memory_mib"] = spec.memory_mib
        layer = layers.get(inst.root_layer) if inst.root_layer else None
        top = self.host.path(layer.path) if layer else None  # None once deleted
        return {
            "id": inst.id,
            "name": spec.name,
            "project": self.quotas.project_name(inst.project_id)
            if self.quotas
            else inst.project_id,
            "state": inst.state.value,
            "state_reason": inst.state_reason,
            "image": spec.image,
            "image_version": inst.image_version,
            "cpus": spec.cpus,
            "memory_mib": spec.memory_mib,
            "disk_gib": round(spec.disk_bytes / GIB, 3),
            "disk_bytes": spec.disk_bytes,
            "accel": inst.accel,
            "pid": inst.pid if running else None,
            "mac": hw.mac if hw else None,
            "nics": nics.get(inst.id, []),
            "secgroups": groups.get(inst.id, []),
            "forwards": forwards.get(inst.id, []),
            "generation_id": hw.generation_id if hw else None,
            # Changes that take effect at the next boot (resize where hot-plug could not).
            "pending_next_boot": pending,
            "snapshots": snapshots.get(inst.id, 0),
            "created_at": inst.created_at,
            "updated_at": inst.updated_at,
            "boot": inst.boot.to_dict(),
            "host": {
                "rss_bytes": self.host.rss_bytes(inst.id) if running else None,
                "disk_allocated_bytes": self.host.disk_bytes(top) if top else None,
            },
        }

    def lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def image_folder(self, inst: Instance) -> Path:
        return Path(self.config.images_dir) / inst.spec.image / inst.image_version

    def boot_folder(self, inst: Instance) -> Path:
        """Where the VM's kernel and initramfs are: its image's, or for a machine imported from
        a backup its own (instances/<id>/: an import never writes into the shared image store).
        """
        own = self.config.instances_dir / inst.id
        return own if (own / "vmlinuz").exists() else self.image_folder(inst)

    def vm_spec(self, inst: Instance, hardware: Hardware | None = None) -> VMSpec:
        folder = self.boot_folder(inst)
        hw = hardware or inst.hardware
        assert hw is not None and inst.root_layer is not None
        return VMSpec(
            instance_id=inst.id,
            name=inst.spec.name,
            hardware=hw,
            project_id=inst.project_id,
            uid=inst.uid,
            kernel=folder / "vmlinuz",
            initrd=folder / "initrd.img",
            disk_chain=self.disk_chain(inst.root_layer),
        )

    def set_state(
        self, inst: Instance, state: State, reason: str | None = None, **fields: object
    ) -> None:
        check_transition(inst.state, state, name=inst.name)
        inst.state = state
        inst.state_reason = reason
        self.store.update(inst.id, state=state, state_reason=reason, **fields)

    # -- disk layers -----------------------------------------------------------------------------
    def layer_path(self, layer_id: str) -> Path:
        layer = self.layers.get(layer_id)
        if layer is None:
            raise NotFound(f"disk layer {layer_id} is missing from the store")
        return self.host.path(layer.path)

    def disk_chain(self, layer_id: str) -> tuple[Path, ...]:
        """The files of a disk whose top is ``layer_id``, top first, down to the image disk
        under its bottom layer if it has one: what QEMU and qemu-img are given, explicitly,
        instead of the backing names written in the files' headers."""
        chain = self.layers.chain(layer_id)
        if not chain or chain[-1].backing is not None:
            raise NotFound(f"disk layer {chain[-1].backing if chain else layer_id} is missing")
        paths = [self.host.path(layer.path) for layer in chain]
        bottom = chain[-1]
        if bottom.base_image == UNSETTLED_BASE:
            raise EngineError(f"disk layer {bottom.id} has no recorded base yet")
        if bottom.base_image:
            paths.append(self.host.path(bottom.base_image))
        return tuple(paths)

    def settle_base_images(self) -> builtins.list[str]:
        """Layers recorded before the store kept each bottom layer's base (migration 6): read
        once from the file whether it was made over an image, and record which image the store
        says (never the path the header names)."""
        settled = []
        instances = {inst.id: inst for inst in self.store.list()}
        for layer in self.layers.all().values():
            if layer.base_image != UNSETTLED_BASE:
                continue
            owner = instances.get(layer.instance_id or "") or next(
                (instances[i] for i in self.layers.users(layer.id) if i in instances), None
            )
            path = self.host.path(layer.path)
            if owner is not None and self.host.names_backing_file(path):
                base = self.image_folder(owner) / "disk.qcow2"
                self.layers.set_base_image(layer.id, str(base.relative_to(self.config.home)))
            else:
                self.layers.set_base_image(layer.id, None)
            settled.append(f"layer {layer.id}: base recorded")
        return settled

    async def new_top_layer(
        self, inst: Instance, *, on: str | None, size_bytes: int, live: bool = False
    ) -> Layer:
        """Give ``inst`` a new, empty top layer over layer ``on`` (None: the image's disk).

        The record is written before the file exists (a crash leaves a row the reconciler
        repairs, never a disk the store does not know); ``live`` means the running QEMU makes
        the file itself and switches to it (an external snapshot).
        """
        layer_id = new_id("l-")
        image_disk = self.image_folder(inst) / "disk.qcow2"
        base = None if on else str(image_disk.relative_to(self.config.home))
        layer = Layer(layer_id, inst.id, f"disks/{layer_id}.qcow2", on, time.time(), base)
        path = self.host.path(layer.path)
        previous = inst.root_layer
        self.layers.add_on_top(layer, inst.id)
        inst.root_layer = layer_id
        try:
            if live:
                await self.host.snapshot_disk_live(inst.id, path)
            else:
                backing = self.layer_path(on) if on else image_disk
                await self.host.create_disk(path, backing, size_bytes)
        except GureumError:
            self.store.update(inst.id, root_layer=previous)
            inst.root_layer = previous
            self.layers.remove(layer_id)
            await self.host.remove_file(path)
            raise
        return layer

    async def collect_layers(self) -> builtins.list[str]:
        """Delete the files of layers that no disk and no snapshot builds on any more."""
        gone = []
        for layer in self.layers.unreachable():
            await self.host.remove_file(self.host.path(layer.path))
            self.layers.remove(layer.id)
            gone.append(layer.id)
        return gone

    # -- admission -------------------------------------------------------------------------------
    async def admit(self, cpus: int, memory_mib: int, *, replacing: Instance | None = None) -> None:
        """Refuse what the host cannot take. ``replacing``: an active VM whose own share is
        counted as freed (a restore or resize replaces it)."""
        used_cpus, used_mib = self.store.committed(ACTIVE)
        growing = self.growing.of(HOST)
        used_cpus, used_mib = used_cpus + growing["cpus"], used_mib + growing["memory_mib"]
        if replacing is not None and replacing.state in ACTIVE:
            used_cpus -= replacing.spec.cpus
            used_mib -= replacing.spec.memory_mib
        admit(self.host.capacity(), used_cpus, used_mib, cpus, memory_mib)

    # -- launch ----------------------------------------------------------------------------------
    def validate(
        self, req: LaunchRequest, project_id: str = DEFAULT_PROJECT
    ) -> tuple[InstanceSpec, str]:
        check_name(req.name, what="instance name")
        check_cpus(req.cpus)
        check_memory(req.memory_mib)
        image = self.images.get(req.image)
        disk = image.disk_virtual_bytes if req.disk_bytes is None else req.disk_bytes
        if disk < image.disk_virtual_bytes:
            raise InvalidInput(
                f"disk must be at least the image's size, {image.disk_virtual_bytes / GIB:.2f} GiB"
                f" (asked {disk / GIB:.2f} GiB)"
            )
        if disk > MAX_DISK_BYTES:
            raise InvalidInput(f"disk must be at most {MAX_DISK_BYTES // GIB} GiB")
        if len(req.networks) > MAX_NICS:
            raise InvalidInput(f"an instance has at most {MAX_NICS} NICs")
        if len(set(req.networks)) != len(req.networks):
            raise InvalidInput("a network is named twice")
        if NO_NETWORK in req.networks and len(req.networks) > 1:
            raise InvalidInput(f"network {NO_NETWORK!r} cannot be combined with others")
        for ref in req.networks:
            if ref not in (DEFAULT_NETWORK, NO_NETWORK):
                self.networks.get(ref, project_id)
        for ref in req.secgroups:
            if ref != DEFAULT_GROUP:
                self.secgroups.get(ref, project_id)
        if req.user_data is not None and len(req.user_data.encode()) > 64 * 1024:
            raise InvalidInput("user data must be at most 64 KiB")
        for key in req.ssh_keys:
            if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in key or len(key) > 16384:
                raise InvalidInput(
                    "an SSH key must be one line in OpenSSH format (ssh-ed25519 ...)"
                )
        spec = InstanceSpec(req.name, req.image, req.cpus, req.memory_mib, whole_mib(disk))
        return spec, image.version

    async def launch(
        self, req: LaunchRequest, project_id: str = DEFAULT_PROJECT
    ) -> tuple[Instance, Operation]:
        spec, image_version = self.validate(req, project_id)
        async with self.admission:
            # Check and claim in one step: two launches can never both take the last MiB of
            # the host or of the project's quota (or the same address).
            self.quotas.check(
                project_id,
                instances=1,
                cpus=spec.cpus,
                memory_mib=spec.memory_mib,
                disk_bytes=spec.disk_bytes,
            )
            await self.admit(spec.cpus, spec.memory_mib)
            nets = [
                await self.networks.default(project_id)
                if r == DEFAULT_NETWORK
                else self.networks.get(r, project_id)
                for r in (req.networks or (DEFAULT_NETWORK,))
                if r != NO_NETWORK
            ]
            groups = self.secgroups.resolve(list(req.secgroups), project_id)
            inst = Instance(
                id=new_id("i-"),
                spec=spec,
                state=State.PENDING,
                created_at=time.time(),
                image_version=image_version,
                accel=self.host.accel.accel,
                user_data=req.user_data,
                ssh_keys=tuple(req.ssh_keys),
                project_id=project_id,
                uid=self.store.next_uid(),
            )
            self.store.insert(inst)
            try:
                for slot, net in enumerate(nets):
                    self.networks.new_nic(inst.id, net, slot)
                self.networks.store.set_instance_groups(inst.id, groups)
            except BaseException:
                self.networks.store.forget_instance(inst.id)
                self.store.delete(inst.id)
                raise
            inst.hardware = Hardware.for_boot(
                spec.cpus, spec.memory_mib, self.networks.hardware_nics(inst.id)
            )
            self.store.update(inst.id, hardware=inst.hardware)
        op = self.ops.start(
            "launch", inst.id, lambda ctx: self.boot(inst.id, ctx, fresh=True), inst.project_id
        )
        return inst, op

    async def boot(
        self,
        instance_id: str,
        ctx: Reporter,
        *,
        fresh: bool = False,
        restore_from: Path | None = None,
        identity: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """Start the VM's QEMU and wait for its agent: a cold boot, or with ``restore_from`` a
        resume from a memory snapshot (the caller has set the hardware and top layer). With
        ``identity`` the guest is told it is a new machine (clone) once it answers."""
        events = _Events(self, instance_id)
        async with self.lock(instance_id):
            inst = self.store.get(instance_id)
            if inst is None:
                raise NotFound("the instance was deleted")
            try:
                if fresh:
                    ctx.progress(
                        f"creating root disk ({inst.spec.disk_bytes / GIB:g} GiB, thin overlay)"
                    )
                    await self.new_top_layer(inst, on=None, size_bytes=inst.spec.disk_bytes)
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
                # DHCP must know the NICs' MACs, and the firewall their TAPs, before they speak.
                await self.networks.sync_instance(inst.id)
                self.set_state(inst, State.STARTING, boot="{}", pid=None, hardware=hardware)
                inst.hardware = hardware
                events.ctx = ctx
                self._events[instance_id] = events
                spec = self.vm_spec(inst)
                pid = await self.host.start(spec, events, restore_from=restore_from)
                self.store.update(instance_id, pid=pid, accel=self.host.accel.accel)
                ctx.progress(f"QEMU running as pid {pid} ({self.host.accel.accel})")
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

    async def _await_ready(
        self,
        instance_id: str,
        events: _Events,
        ctx: Reporter,
        *,
        refresh: bool = False,
        identity: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """Wait for the guest agent (outside the VM's lock, so a stop can interrupt)."""
        events.ctx = ctx
        refreshed: dict[str, object] = {}
        try:
            await self.host.wait_ready(instance_id, self.config.boot_timeout_s)
            if refresh:
                # Restored or cloned: the guest's random pool and machine id were someone
                # else's a moment ago (and for a clone, its hostname and MACs too).
                machine_id = await self.host.refresh_identity(instance_id, **(identity or {}))  # type: ignore[arg-type]
                refreshed = {"machine_id": machine_id, **(identity or {})}
                ctx.progress(
                    "guest identity refreshed (random seed, machine id"
                    + (", hostname, MAC)" if identity else ")")
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
        result: dict[str, object] = {"instance": self.view(self.get(instance_id))}
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
            log.warning("%s (%s) %s: %s", inst.name, inst.id, new.value, detail)
        elif inst.state == State.STOPPING:
            self.set_state(inst, State.STOPPED, detail, pid=None)
        # STARTING: the boot waiter sees the exit and records why the start failed.

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
            # Paused in the middle of a snapshot's freeze, its thaw may have failed.
            task = asyncio.create_task(self.host.thaw_if_frozen(instance_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def resume_paused(self) -> builtins.list[str]:
        """Resume VMs QEMU paused on a full host disk once there is room again (the
        reconciler asks every pass). A VM that fills it again is simply paused again."""
        resumed = []
        paused = [i for i in self.store.list() if i.state == State.PAUSED]
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
        if inst.hardware is None:  # a row from before hardware was recorded
            inst.hardware = Hardware.for_boot(inst.spec.cpus, inst.spec.memory_mib)
            self.store.update(inst.id, hardware=inst.hardware)
        pid = self.host.find_running(inst.id)
        if inst.state not in ACTIVE:
            if pid is None:
                return None
            await self.host.kill(inst.id)
            return f"{inst.name}: killed the QEMU of a {inst.state.value} VM"
        if pid is None:
            if inst.state == State.STOPPING or self.host.died_cleanly(inst.id):
                new, why = State.STOPPED, "guest powered off while the service was down"
            elif inst.state == State.RUNNING:
                new, why = State.CRASHED, "QEMU exited while the service was down"
            else:
                new, why = State.ERROR, "start interrupted by a service restart"
            self.set_state(inst, new, why, pid=None)
            return f"{inst.name}: {new.value} ({why})"
        events = _Events(self, inst.id)
        events.boot = inst.boot
        self._events[inst.id] = events
        booted = inst.state in (State.RUNNING, State.PAUSED)
        real_top = await self.host.adopt(self.vm_spec(inst), pid, events, booted=booted)
        self.store.update(inst.id, pid=pid)
        self._repair_top_layer(inst, real_top)
        assert inst.root_layer is not None
        self.host.update_disk_chain(inst.id, self.disk_chain(inst.root_layer))
        if inst.state in (State.PENDING, State.STARTING):
            if inst.state == State.PENDING:
                self.set_state(inst, State.STARTING)

            async def finish_boot(ctx: OpContext) -> dict[str, object]:
                ctx.progress("re-adopted a booting VM after a service restart")
                return await self._await_ready(inst.id, events, ctx)

            self.ops.start("adopt", inst.id, finish_boot, inst.project_id)
        elif inst.state == State.STOPPING:
            # A stop was under way when the service went down: finish it.
            self.ops.start("stop", inst.id, lambda ctx: self._stop(inst.id, ctx), inst.project_id)
        return f"{inst.name}: re-adopted QEMU pid {pid}"

    def _repair_top_layer(self, inst: Instance, real_top: Path) -> None:
        """A snapshot cut short by a crash may leave the store one layer ahead of QEMU (the
        new top's record is written before QEMU switches to it): then QEMU still writes the
        layer under the recorded top, and that layer becomes the top again. Nothing else QEMU
        says is believed: a compromised one could name any layer of any VM."""
        recorded = self.layers.get(inst.root_layer) if inst.root_layer else None
        if recorded is None or self.host.path(recorded.path) == real_top:
            return
        below = self.layers.get(recorded.backing) if recorded.backing else None
        if below is not None and self.host.path(below.path) == real_top:
            log.warning(
                "%s: disk top is %s, not %s; repaired", inst.name, below.id, inst.root_layer
            )
            self.store.update(inst.id, root_layer=below.id)
            inst.root_layer = below.id
        else:
            log.error("%s: QEMU reports %s as its disk; the store's record is kept",
                      inst.name, real_top)  # fmt: skip

    # -- stop / start / restart ------------------------------------------------------------------
    async def stop(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("stop", inst.state, name=inst.name)
        return self.ops.start(
            "stop", inst.id, lambda ctx: self._stop(inst.id, ctx), inst.project_id
        )

    async def _stop(self, instance_id: str, ctx: Reporter) -> dict[str, object]:
        async with self.lock(instance_id):
            return await self.stop_locked(instance_id, ctx)

    async def stop_locked(self, instance_id: str, ctx: Reporter) -> dict[str, object]:
        inst = self.get(instance_id)
        if inst.state not in (State.RUNNING, State.STARTING, State.PAUSED, State.STOPPING):
            return {"instance": self.view(inst), "how": "already " + inst.state.value}
        self.set_state(inst, State.STOPPING)
        ctx.progress(
            f"asking the guest to power off (ACPI), {self.config.stop_timeout_s:g} s at most"
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
            "quit": "QEMU quit (the guest ignored ACPI)",
            "killed": "QEMU killed (it did not quit)",
        }
        ctx.progress(messages.get(how, how))
        return {"instance": self.view(inst), "how": how}

    async def kill_locked(self, inst: Instance) -> None:
        """Hard-stop a VM whose state is about to be replaced (restore): nothing to save."""
        if inst.state in (State.RUNNING, State.STARTING, State.PAUSED, State.STOPPING):
            self.set_state(inst, State.STOPPING)
            await self.host.kill(inst.id)
            self.host.forget(inst.id)
            self.set_state(inst, State.STOPPED, "stopped for a restore", pid=None)

    async def start(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("start", inst.state, name=inst.name)
        async with self.admission:
            await self.admit(inst.spec.cpus, inst.spec.memory_mib)
        return self.ops.start(
            "start", inst.id, lambda ctx: self.boot(inst.id, ctx), inst.project_id
        )

    async def restart(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("restart", inst.state, name=inst.name)
        if inst.state not in ACTIVE:
            async with self.admission:
                await self.admit(inst.spec.cpus, inst.spec.memory_mib)

        async def work(ctx: OpContext) -> dict[str, object]:
            if self.get(inst.id).state in (State.RUNNING, State.STARTING, State.PAUSED):
                await self._stop(inst.id, ctx)
            return await self.boot(inst.id, ctx)

        return self.ops.start("restart", inst.id, work, inst.project_id)

    # -- delete ----------------------------------------------------------------------------------
    async def delete(
        self, ref: str, *, force: bool = False, project_id: str | None = None
    ) -> Instance:
        inst = self.get(ref, project_id)
        if inst.state in ACTIVE and not force:
            raise InvalidState(
                f"{inst.name} is {inst.state.value}; stop it first or delete with --force"
            )
        async with self.lock(inst.id):
            await self.host.destroy(inst.id)
            # The files under its top layer: others (a clone's source) may share them.
            chain = self.layers.chain(inst.root_layer) if inst.root_layer else []
            below = [self.host.path(layer.path) for layer in chain[1:]]
            await self.forwards.drop_instance(inst.id)
            networks = {n.network_id for n in self.networks.store.nics(instance_id=inst.id)}
            self.networks.store.forget_instance(inst.id)
            for network_id in networks:
                net = self.networks.store.network(network_id)
                if net is not None:
                    await self.networks.sync(net)
            for snap in self.snapshots.list(inst.id):
                self.snapshots.remove(snap.id)
                await self.host.remove_file(self.config.snapshots_dir / snap.id)
            self.store.delete(inst.id)
            self._events.pop(inst.id, None)
            # Layers a clone still builds on stay; the rest go.
            await self.collect_layers()
            if inst.uid is not None:  # what stays is no longer this VM's to read
                await self.host.revoke_access(inst.uid, below)
        self._locks.pop(inst.id, None)
        return inst

    # -- guest access ----------------------------------------------------------------------------
    async def exec(
        self,
        ref: str,
        argv: builtins.list[str],
        *,
        stdin: bytes | None = None,
        timeout: float = 60.0,
        project_id: str | None = None,
    ) -> dict[str, object]:
        inst = self.get(ref, project_id)
        check_action("exec", inst.state, name=inst.name)
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise InvalidInput("command must be a non-empty list of strings")
        if not 0 < timeout <= 3600:
            raise InvalidInput("timeout must be between 0 and 3600 seconds")
        try:
            result = await self.host.exec(inst.id, argv, stdin, timeout)
        except EngineError as exc:
            # qemu-ga reports a command it cannot start as an error; that is the user's input.
            raise InvalidInput(f"cannot run {argv[0]!r} in {inst.name}: {exc.message}") from exc
        return {
            "exit_code": result.exit_code,
            "signal": result.signal,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "truncated": result.truncated,
        }

    def console(self, ref: str, project_id: str | None = None) -> Console:
        inst = self.get(ref, project_id)
        check_action("console", inst.state, name=inst.name)
        return self.host.console(inst.id)

    async def console_log(self, ref: str, project_id: str | None, tail_bytes: int) -> bytes:
        """What the VM's serial console printed (the last ``tail_bytes``; 0: all kept)."""
        inst = self.get(ref, project_id)
        return await self.host.console_log(inst.id, tail_bytes)

    def host_summary(self) -> dict[str, object]:
        host = self.host.capacity()
        cpus, mem = self.store.committed(ACTIVE)
        return {
            "accel": self.host.accel.accel,
            "accel_reason": self.host.accel.reason,
            "capacity": host.to_dict(),
            "committed": {"cpus": cpus, "memory_mib": mem},
            "instances": len(self.store.list()),
            "store": self.store.db.backend,
        }

    async def drop_internal_snapshots(self) -> builtins.list[str]:
        """Snapshots gureum takes for itself (exports) that a stopped service left behind."""
        dropped = []
        for snap in self.snapshots.list():
            if snap.name.startswith(INTERNAL_SNAPSHOT_PREFIX):
                self.snapshots.remove(snap.id)
                await self.host.remove_file(self.config.snapshots_dir / snap.id)
                dropped.append(f"internal snapshot {snap.name} dropped")
        return dropped

    def known_files(self) -> set[Path]:
        """Every disk layer and snapshot folder the store knows (the reconciler keeps them)."""
        files = {self.host.path(layer.path) for layer in self.layers.all().values()}
        files |= {self.config.snapshots_dir / s.id for s in self.snapshots.list()}
        return files

    def new_generation(self, hardware: Hardware) -> Hardware:
        return replace(hardware, generation_id=new_generation_id())
