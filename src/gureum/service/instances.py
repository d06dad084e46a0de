"""Instance use cases a user calls: launch, start, stop, restart, delete, exec, console.

Validation and admission happen before anything is created, so bad input leaves nothing
behind. The work is done by collaborators, each passed in: ``Creator`` (the one creation
path), ``Lifecycle`` (boot, readiness, stop, events), ``DiskLayers`` (the disk chain),
``InstanceViews`` (what the API shows) and ``Admission`` (the host's capacity).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from gureum.config import Config
from gureum.errors import (
    CommandNotFound,
    EngineError,
    GureumError,
    InvalidInput,
    InvalidState,
    found,
)
from gureum.host.interface import Console, HostAgent, Identity
from gureum.ids import check_name, looks_like_id
from gureum.model.hardware import BIOS, MAX_CPUS, MAX_NICS, Hardware, new_generation_id
from gureum.model.image import Image
from gureum.model.instance import (
    ACTIVE,
    DEFAULT_PROJECT,
    Instance,
    InstanceSpec,
    State,
    check_action,
    committed,
)
from gureum.model.network import Network
from gureum.model.operation import Operation
from gureum.model.snapshot import Snapshot
from gureum.model.sshkeys import MAX_KEYS, public_key
from gureum.model.template import SavedTemplate, Waiting
from gureum.model.userdata import check_user_data
from gureum.service.admission import Admission
from gureum.service.creation import Creator, Draft
from gureum.service.disks import DiskLayers
from gureum.service.forwards import ForwardService
from gureum.service.images import ImageService
from gureum.service.keypairs import KeyPairService
from gureum.service.lifecycle import Lifecycle
from gureum.service.networks import DEFAULT_GROUP, DEFAULT_NETWORK, NO_NETWORK, NetworkService
from gureum.service.operations import OpContext, OperationManager
from gureum.service.secgroups import SecGroupService
from gureum.service.views import InstanceViews
from gureum.service.work_runner import WorkRunner
from gureum.store.instances import InstanceStore
from gureum.store.layers import SnapshotStore
from gureum.units import GIB, MIB

# Work on an instance, run as an operation (``_operation``).
OpWork = Callable[[OpContext], Awaitable[dict[str, object]]]

log = logging.getLogger(__name__)

MIN_MEMORY_MIB = 128
# Names gureum uses for its own short-lived snapshots (backup export); users cannot take them.
INTERNAL_SNAPSHOT_PREFIX = "gureum-"
MAX_DISK_BYTES = 16 * 1024 * GIB


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
    keypairs: tuple[str, ...] = ()  # the project's key pairs, by name: their keys are added
    autostart: bool = False  # start when the service first starts after the host boots
    container: bool = False  # a system container from the image's files instead of a VM
    host: str | None = None  # the host it must go on (None: the scheduler chooses)
    spread_group: str | None = None  # no two instances of one group on one host


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
        snapshots: SnapshotStore,
        images: ImageService,
        host: HostAgent,
        ops: OperationManager,
        admission: Admission,
        networks: NetworkService,
        secgroups: SecGroupService,
        forwards: ForwardService,
        disks: DiskLayers,
        lifecycle: Lifecycle,
        views: InstanceViews,
        creator: Creator,
        keypairs: KeyPairService,
        work: WorkRunner | None = None,
    ) -> None:
        self.work = work
        self.config = config
        self.store = store
        self.snapshots = snapshots
        self.images = images
        self.host = host
        self.ops = ops
        self.admission = admission
        self.networks = networks
        self.secgroups = secgroups
        self.forwards = forwards
        self.disks = disks
        self.lifecycle = lifecycle
        self._views = views
        self.creator = creator
        self.keypairs = keypairs

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
        return found(inst, f"instance named {ref!r}")

    def update(self, instance_id: str, **fields: object) -> None:
        """Write fields of an instance's row (sizes, hardware) as its owner decided them."""
        self.store.update(instance_id, **fields)

    def view(self, inst: Instance) -> dict[str, object]:
        return self._views.view(inst)

    def views(self, insts: builtins.list[Instance]) -> builtins.list[dict[str, object]]:
        return self._views.views(insts)

    # -- launch ----------------------------------------------------------------------------------
    def validate(
        self, req: LaunchRequest, project_id: str = DEFAULT_PROJECT
    ) -> tuple[InstanceSpec, Image, tuple[str, ...]]:
        """Everything a launch is given, checked before anything is made: (the spec, the image,
        the SSH keys as checked: the text handed in may carry more)."""
        check_name(req.name, what="instance name")
        if req.spread_group is not None:
            check_name(req.spread_group, what="spread group")
        check_cpus(req.cpus)
        check_memory(req.memory_mib)
        image = self.images.get(req.image, (project_id,))
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
        if req.user_data is not None:
            check_user_data(req.user_data)
        keys = []
        for key in req.ssh_keys:
            checked = public_key(key, keep_comment=True)
            if checked is None:
                # Not echoed: a pasted private key must not end up in an error or a log.
                raise InvalidInput(
                    "an SSH key must be an OpenSSH public key: the .pub file's one line "
                    "(ssh-ed25519 AAAA... comment), never the private key"
                )
            keys.append(checked)
        if req.container and image.origin != "built":
            raise InvalidInput(
                f"image {image.name} is not one gureum built ({image.origin}): a container runs "
                "only the files of an image gureum built, which it unpacks from the image's own "
                "disk (a tenant's disk is never unpacked on the host)"
            )
        spec = InstanceSpec(req.name, req.image, req.cpus, req.memory_mib, whole_mib(disk))
        return spec, image, tuple(keys)

    async def launch(
        self,
        req: LaunchRequest,
        project_id: str = DEFAULT_PROJECT,
        saved: SavedTemplate | None = None,
        waiting: Waiting | None = None,
    ) -> tuple[Instance, Operation]:
        """Make the instance and start its first boot: a cold boot, or with ``saved`` (a
        template of the image, of this shape and version: ``TemplateService.launch`` found it)
        a clone of the template's saved machine, told at once that it is a new one. With
        ``waiting`` (a QEMU of the pool started for that template) the instance is the one
        that QEMU was started for: its id, user, disk layer and vmgenid."""
        spec, image, given = self.validate(req, project_id)
        # The key pairs' copied in: one deleted later does not take access away from this VM.
        keys = tuple(dict.fromkeys((*given, *self.keypairs.keys(req.keypairs, project_id))))
        if len(keys) > MAX_KEYS:
            raise InvalidInput(
                f"an instance takes at most {MAX_KEYS} SSH keys, given and from key pairs "
                f"together ({len(keys)} asked)"
            )

        async def networks() -> builtins.list[tuple[int, Network]]:
            nets = [
                await self.networks.default(project_id)
                if r == DEFAULT_NETWORK
                else self.networks.get(r, project_id)
                for r in (req.networks or (DEFAULT_NETWORK,))
                if r != NO_NETWORK
            ]
            return list(enumerate(nets))

        def groups() -> builtins.list[str]:
            return self.secgroups.resolve(list(req.secgroups), project_id)

        inst = self.creator.new(
            spec,
            image.version,
            project_id,
            user_data=req.user_data,
            ssh_keys=keys,
            autostart=req.autostart,
            kind="container" if req.container else "vm",
            host=req.host,
            spread_group=req.spread_group,
        )
        if saved is not None:
            inst = replace(inst, template_id=saved.template.id)
            if waiting is not None:
                inst = replace(inst, id=waiting.instance_id, uid=waiting.uid)

        def hardware(nics: tuple[tuple[int, str, str], ...]) -> Hardware:
            if saved is not None:  # the saved machine, with a new vmgenid and its own NICs
                generation = waiting.generation_id if waiting else new_generation_id()
                return replace(saved.snapshot.hardware, generation_id=generation, nics=nics)
            # The firmware matters only to a disk with its own bootloader (an imported image).
            return Hardware.for_boot(spec.cpus, spec.memory_mib, nics, image.firmware or BIOS)

        local_only = (
            "containers" if req.container
            else "clones of a template" if saved is not None
            else "a project's own images" if image.project_id is not None
            else None
        )  # fmt: skip
        draft = Draft(inst, networks, groups, hardware, macs=dict(waiting.macs) if waiting else {},
                      local_only=local_only)  # fmt: skip
        inst = await self.creator.create(draft)
        if saved is None:
            work = partial(self.lifecycle.boot, inst.id, fresh=True)
        else:
            tpl, snap = saved
            what = f"template {tpl.id} ({tpl.shape.key})"
            work = partial(self.boot_from, inst.id, snap, what, shared=True, waiting=waiting)
        return inst, self._operation("launch", inst, work)

    def _operation(self, kind: str, inst: Instance, work: OpWork) -> Operation:
        """``work`` on the instance as an operation; on a joined host, as work queued in the
        store, so that another control plane finishes it should this one die."""
        router = self.lifecycle.host
        if self.work is None or router.is_local(inst.host):
            return self.ops.start(kind, inst.id, work, inst.project_id)
        runner, host = self.work, inst.host
        assert host is not None
        runner.check_free(inst.id, inst.name)

        async def queued(ctx: OpContext) -> dict[str, object]:
            return await runner.run(host, kind, inst.id, ctx, partial(work, ctx))

        return self.ops.start(kind, inst.id, queued, inst.project_id)

    async def boot_from(
        self,
        instance_id: str,
        snap: Snapshot,
        what: str,
        ctx: OpContext,
        shared: bool = False,
        waiting: Waiting | None = None,
    ) -> dict[str, object]:
        """The first start of a new instance made from another's snapshot (a clone, or a launch
        from a template, ``what``): a thin disk of its own on the snapshot's layer, then with
        memory a resume of the saved machine (its RAM mapped copy-on-write) told at once that
        it is a new one (hostname, MACs and DHCP, machine id, entropy), else a cold boot.
        ``shared``: the snapshot's memory stays loaded for the next ones (a template's).
        ``waiting``: the pool's QEMU made for this instance, its disk layer made too."""
        try:
            async with self.lifecycle.lock(instance_id):
                inst = self.get(instance_id)
                if waiting is not None:
                    ctx.progress(f"a QEMU waiting for {what} taken from the pool")
                    self.disks.adopt_top(inst, waiting.layer_id, on=snap.layer)
                else:
                    ctx.progress(f"thin disk on {what}")
                    await self.disks.new_top(inst, on=snap.layer, size_bytes=inst.spec.disk_bytes)
        except GureumError as exc:
            await self.lifecycle.mark_error(instance_id, f"first start failed: {exc.message}")
            raise
        inst = self.get(instance_id)
        assert inst.hardware is not None
        # A QEMU of the pool has its guest's MACs set already (to themselves: one code path).
        before = inst.hardware.nics if waiting is not None else snap.hardware.nics
        macs = self.networks.mac_changes(before, inst.hardware.nics, keep_same=True)
        # Its SSH keys for the image's default user, should its guest be a cloud-init one that
        # is provisioned again (the guest decides): SSH need not wait for cloud-init.
        # Not root's: cloud-init gives root only a "log in as ..." refusal (disable_root).
        user = self.images.default_user(inst)
        login = (user, inst.ssh_keys) if inst.ssh_keys and user != "root" else None
        identity = Identity(
            hostname=inst.name,
            macs=macs if snap.memory else None,
            login=login,
            shared=snap.memory,
        )
        restore_from = snap.id if snap.memory else None
        return await self.lifecycle.boot(
            instance_id, ctx, restore_from=restore_from, identity=identity, keep_memory=shared
        )

    # -- stop / start / restart ------------------------------------------------------------------
    async def stop(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("stop", inst.state, name=inst.name)
        return self._operation("stop", inst, partial(self.lifecycle.stop, inst.id))

    async def start(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("start", inst.state, name=inst.name)
        async with self.admission:
            await self.admission.admit(inst.spec.cpus, inst.spec.memory_mib, on=inst.host)
        return self._operation("start", inst, partial(self.lifecycle.boot, inst.id))

    async def restart(self, ref: str, project_id: str | None = None) -> Operation:
        inst = self.get(ref, project_id)
        check_action("restart", inst.state, name=inst.name)
        if inst.state not in ACTIVE:
            async with self.admission:
                await self.admission.admit(inst.spec.cpus, inst.spec.memory_mib, on=inst.host)

        async def work(ctx: OpContext) -> dict[str, object]:
            if self.get(inst.id).state in (State.RUNNING, State.STARTING, State.PAUSED):
                await self.lifecycle.stop(inst.id, ctx)
            return await self.lifecycle.boot(inst.id, ctx)

        return self._operation("restart", inst, work)

    async def autostart(self) -> builtins.list[str]:
        """At the service's first start since the host booted: start every VM launched with
        autostart that is down (after a reboot, every one of them). A later start of the
        service (a restart, an upgrade) starts nothing: VMs stopped on purpose stay stopped."""
        if not self.host.first_start_since_boot():
            return []
        started = []
        for inst in self.store.list():
            if not inst.autostart or inst.state not in (State.STOPPED, State.CRASHED):
                continue
            try:
                await self.start(inst.id)
            except GureumError as exc:  # no room now, say: it stays down, and the log says why
                log.error("cannot autostart %s: %s", inst.name, exc.message)
                continue
            started.append(inst.name)
        return started

    # -- delete ----------------------------------------------------------------------------------
    async def delete(
        self, ref: str, *, force: bool = False, project_id: str | None = None
    ) -> Instance:
        inst = self.get(ref, project_id)
        if inst.state in ACTIVE and not force:
            raise InvalidState(
                f"{inst.name} is {inst.state.value}; stop it first or delete with --force"
            )
        async with contextlib.AsyncExitStack() as held:
            if self.work is not None and inst.host and not self.lifecycle.host.is_local(inst.host):
                # No other control plane acts on it while it goes (Conflict if one does now).
                await held.enter_async_context(
                    self.work.holding(inst.host, "delete", inst.id, inst.name)
                )
            await self._delete(inst)
        return inst

    async def _delete(self, inst: Instance) -> None:
        async with self.lifecycle.lock(inst.id):
            await self.host.destroy(inst.id)
            # The files under its top layer (others, a clone's source, may share them), and its
            # project's image's files it was given read on.
            below = self.disks.below_top(inst) + self.disks.private_image_files(inst)
            await self.forwards.drop_instance(inst.id)
            # Layers a clone still builds on stay; the rest go.
            await self.creator.forget(inst.id)
            if inst.uid is not None:  # what stays is no longer this VM's to read
                await self.host.revoke_access(inst.uid, below)
        self.lifecycle.forget_lock(inst.id)

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
        except CommandNotFound as exc:  # the CLI exits 127 for it, as a shell does
            raise CommandNotFound(f"cannot run {argv[0]!r} in {inst.name}: {exc.message}") from exc
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
        instances = self.store.list()
        cpus, mem = committed(instances)
        return {
            "accel": self.host.accel.accel,
            "accel_reason": self.host.accel.reason,
            "capacity": host.to_dict(),
            "committed": {"cpus": cpus, "memory_mib": mem},
            "instances": len(instances),
            "store": self.store.db.backend,
        }

    async def drop_internal_snapshots(self) -> builtins.list[str]:
        """Snapshots gureum takes for itself (exports) that a stopped service left behind."""
        dropped = []
        for snap in self.snapshots.list():
            if snap.name.startswith(INTERNAL_SNAPSHOT_PREFIX):
                self.snapshots.remove(snap.id)
                await self.host.remove_snapshot(snap.id)
                dropped.append(f"internal snapshot {snap.name} dropped")
        return dropped
