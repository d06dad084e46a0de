"""The host's pool of waiting QEMUs: for each template in use, up to ``size`` QEMUs started
ahead of any launch, so that a launch from the template skips QEMU's own start-up.

Each waiting QEMU (``Waiting``) already has all of its VM but the guest's state and its
networks: an instance id, a user of its own, a disk layer of its own over the template's, a
new vmgenid, the template's RAM mapped (the one sealed copy all its clones share) and its TAPs,
on no network (``HostAgent.start_waiting``). A launch takes one (``take``), gives it a project,
a name and networks, and only then loads the saved state into it; the pool refills in the
background, one QEMU at a time.

A waiting QEMU gives no guest anything, but its own memory is real: each holds
``WAITING_QEMU_MIB`` of the host's capacity under admission's rules, and the pool stops
growing (and says why) when the host has no room. The size is the administrator's
(``gureum host pool --size``), kept in the store; the QEMUs are not: they end when the service
stops, and the pool is filled again at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gureum.errors import GureumError, InvalidInput
from gureum.host.interface import HostAgent, VMSpec
from gureum.ids import new_id
from gureum.model.hardware import new_generation_id, new_mac
from gureum.model.template import Template, Waiting
from gureum.service.admission import POOL, Admission
from gureum.service.disks import DiskLayers, layer_file
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore
from gureum.store.layers import SnapshotStore
from gureum.store.settings import SettingsStore
from gureum.store.templates import TemplateStore

log = logging.getLogger(__name__)

SIZE_SETTING = "pool_size"
MAX_SIZE = 16  # per template
# What one waiting QEMU takes of the host's memory before any guest runs in it (its own heap,
# TCG's first buffers, page tables of the mapped template RAM), rounded up from the RSS that
# ``bench/instant.py`` reports for the pool.
WAITING_QEMU_MIB = 128
RETRY_S = 30.0  # after a failure to start one (no room, a QEMU that died), before trying again


@dataclass
class _Events:
    """What a waiting QEMU's engine reports before a launch takes it: only its exit matters."""

    gone: Callable[[], None]
    events: list[str] = field(default_factory=list)
    exited: bool = False

    def on_boot_event(self, event: str, at: float) -> None:
        self.events.append(event)

    def on_paused(self, reason: str) -> None:
        pass

    def on_resumed(self) -> None:
        pass

    def on_exit(self, how: str, detail: str) -> None:
        log.warning("a waiting QEMU exited (%s): %s", how, detail)
        self.exited = True
        self.gone()


class Pool:
    def __init__(
        self,
        settings: SettingsStore,
        templates: TemplateStore,
        images: ImageStore,
        snapshots: SnapshotStore,
        instances: InstanceStore,
        disks: DiskLayers,
        admission: Admission,
        host: HostAgent,
    ) -> None:
        self.settings = settings
        self.templates = templates
        self.images = images
        self.snapshots = snapshots
        self.instances = instances
        self.disks = disks
        self.admission = admission
        self.host = host
        self._waiting: dict[str, list[Waiting]] = {}  # by template id, oldest first
        self._holds: dict[str, Callable[[], None]] = {}  # by instance id: its capacity held
        self._events: dict[str, _Events] = {}  # by instance id, until it is taken for good
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._discarding: set[asyncio.Future[None]] = set()  # a dead QEMU's files going
        self.last_error: str | None = None
        self.taken = 0  # launches served since the service started

    # -- the size ----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        value = self.settings.get(SIZE_SETTING)
        return int(value) if value is not None else 0

    def resize(self, size: object) -> dict[str, object]:
        """Set how many QEMUs wait per template (0: none); the pool grows or shrinks to it in
        the background."""
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
            raise InvalidInput(f"the pool's size is a whole number from 0 to {MAX_SIZE}")
        self.settings.put(SIZE_SETTING, str(size))
        self.last_error = None
        self._wake.set()
        return self.view()

    def view(self) -> dict[str, object]:
        return {
            "size": self.size,
            "waiting_qemu_mib": WAITING_QEMU_MIB,
            "templates": [
                {"template_id": tpl_id, "waiting": len(entries)}
                for tpl_id, entries in sorted(self._waiting.items())
            ],
            "waiting": sum(len(e) for e in self._waiting.values()),
            "taken": self.taken,
            "last_error": self.last_error,
        }

    # -- taking ------------------------------------------------------------------------------------
    def take(self, template_id: str) -> Waiting | None:
        """A waiting QEMU of the template, now the caller's (None: none is waiting); the pool
        refills behind it."""
        entries = self._waiting.get(template_id)
        if not entries:
            return None
        entry = entries.pop(0)
        self._release(entry.instance_id)
        self.taken += 1
        self._wake.set()
        return entry

    def used(self, entry: Waiting) -> None:
        """A taken QEMU is an instance's now: the pool forgets it."""
        self._events.pop(entry.instance_id, None)

    async def give_back(self, entry: Waiting) -> None:
        """Put back a QEMU taken for a launch refused before its instance was made; one that
        exited meanwhile, or whose instance was made and undone, or after the pool closed, is
        ended instead."""
        events = self._events.get(entry.instance_id)
        made = self.instances.get(entry.instance_id) is not None
        if events is None or events.exited or made or self._closed:
            await self.discard(entry)
            return
        async with self.admission:
            self._holds[entry.instance_id] = self.admission.waiting.hold(
                POOL, memory_mib=WAITING_QEMU_MIB
            )
        self._waiting.setdefault(entry.template_id, []).insert(0, entry)
        self.taken -= 1

    async def discard(self, entry: Waiting) -> None:
        """End a waiting QEMU no VM will have, give back what it held of the host, and remove
        its disk layer."""
        self._release(entry.instance_id)
        self._events.pop(entry.instance_id, None)
        await self.host.discard_waiting(entry.instance_id)
        await self.host.remove_file(self.host.path(layer_file(entry.layer_id)))

    async def drain(self, template_id: str) -> None:
        """End every QEMU waiting for the template (it is being removed)."""
        for entry in self._waiting.pop(template_id, []):
            await self.discard(entry)

    # -- the background filler ---------------------------------------------------------------------
    def start(self) -> None:
        self._closed = False
        self._task = asyncio.create_task(self._run(), name="pool")

    def wake(self) -> None:
        """Something the pool follows changed (a template made or removed): fill now."""
        self._wake.set()

    async def close(self) -> None:
        """Stop filling and end every waiting QEMU (the service stops)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for tpl_id in list(self._waiting):
            await self.drain(tpl_id)
        await self.host.close_pool()

    async def filled(self, timeout: float) -> None:
        """Wait until the pool holds its size for every template in use (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while any(len(self._waiting.get(t.id, ())) < self.size for t in self._wanted()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pool did not fill in {timeout:g} s: {self.last_error}")
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.fill()
            except Exception as exc:  # the filler must outlive any one failure
                self.last_error = exc.message if isinstance(exc, GureumError) else repr(exc)
                log.warning("the pool cannot grow: %s", self.last_error)
            # Woken by a change, or at the latest after a while (an image rebuilt: its old
            # template's QEMUs end; a failure: tried again).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_S)

    def _wanted(self) -> list[Template]:
        """The templates a launch can clone now: of their image's current version."""
        current = {i.name: i.version for i in self.images.list()}
        return [t for t in self.templates.list() if current.get(t.image) == t.image_version]

    async def fill(self) -> None:
        """Bring every template's waiting QEMUs to the size, one at a time; end those of
        templates no launch can use any more (their image changed, or they were removed)."""
        size = self.size
        wanted = {t.id: t for t in self._wanted()}
        for tpl_id in [t for t in self._waiting if t not in wanted]:
            await self.drain(tpl_id)
        for entries in list(self._waiting.values()):
            while len(entries) > size:
                extra = entries.pop()
                await self.discard(extra)
        for tpl in wanted.values():
            while len(self._waiting.get(tpl.id, ())) < size:
                entry = await self._start_one(tpl)
                if entry is None:
                    break
                if self._closed or tpl.id not in {t.id for t in self._wanted()}:
                    # Removed, or its image rebuilt, or the pool closed while it started.
                    await self.discard(entry)
                    break
                self._waiting.setdefault(tpl.id, []).append(entry)
                self.last_error = None

    async def _start_one(self, tpl: Template) -> Waiting | None:
        snap = self.snapshots.by_id(tpl.snapshot_id)
        owner = self.instances.get(tpl.instance_id)
        if snap is None or not snap.memory or snap.hardware is None or owner is None:
            return None  # its saved machine was deleted by hand: launches of it boot
        async with self.admission:
            await self.admission.admit(0, WAITING_QEMU_MIB)
            release = self.admission.waiting.hold(POOL, memory_mib=WAITING_QEMU_MIB)
        instance_id = new_id("i-")
        layer_id, path = self.disks.new_file()
        try:
            await self.host.create_disk(path, self.disks.layer_path(snap.layer), tpl.disk_bytes)
            boot = self.disks.boot_files(owner)
            # A vmgenid and MACs of its own: the instance that takes it adopts them (a reset of
            # the guest takes QEMU's MACs again, so they must be the instance's).
            nics = tuple((slot, new_mac(), net) for slot, _mac, net in snap.hardware.nics)
            hardware = replace(snap.hardware, generation_id=new_generation_id(), nics=nics)
            spec = VMSpec(
                instance_id=instance_id,
                name=f"pool-{tpl.id}",
                hardware=hardware,
                project_id=owner.project_id,
                uid=self.instances.next_uid(),
                kernel=boot[0] if boot else None,
                initrd=boot[1] if boot else None,
                disk_chain=(path, *self.disks.chain(snap.layer)),
            )
            events = _Events(lambda: self._gone(tpl.id, instance_id))
            self._events[instance_id] = events
            pairs = zip(snap.hardware.nics, nics, strict=True)
            changes = [(old, new) for (_, old, _), (_, new, _) in pairs]
            pid = await self.host.start_waiting(spec, snap.id, changes, events)
        except BaseException:
            release()
            self._events.pop(instance_id, None)
            await self.host.discard_waiting(instance_id)
            await self.host.remove_file(path)
            raise
        self._holds[instance_id] = release
        assert spec.uid is not None
        macs = tuple((slot, mac) for slot, mac, _net in hardware.nics)
        return Waiting(
            tpl.id, instance_id, spec.uid, layer_id, hardware.generation_id, macs, pid, time.time()
        )

    def _gone(self, template_id: str, instance_id: str) -> None:
        """A waiting QEMU exited by itself: out of the pool, its files removed."""
        entries = self._waiting.get(template_id, [])
        for entry in entries:
            if entry.instance_id == instance_id:
                entries.remove(entry)
                going = asyncio.ensure_future(self.discard(entry))  # its files
                self._discarding.add(going)
                going.add_done_callback(self._discarding.discard)
                self.last_error = f"a waiting QEMU of template {template_id} exited"
                # Refilled later, not at once: a QEMU that cannot wait must not spin the host.
                asyncio.get_running_loop().call_later(RETRY_S, self._wake.set)
                break

    def _release(self, instance_id: str) -> None:
        release = self._holds.pop(instance_id, None)
        if release is not None:
            release()
