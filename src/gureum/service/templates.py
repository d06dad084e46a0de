"""Image templates: an image booted once and saved running (its disk layer and memory), so that
a launch of the same shape is a clone of the saved machine instead of a boot.

A template is an ordinary instance of the templates project (``TEMPLATES_PROJECT``, the
administrator's to see, no one's to use), stopped after a memory snapshot was taken of it. A
launch that finds a template of its image's current version and its shape clones that snapshot
(``InstanceService.launch(template=...)``): a thin disk on the template's layer, the template's
RAM file mapped copy-on-write, a new vmgenid, hostname, MACs, addresses, machine id and entropy
before the guest runs anything else. Anything else boots cold, as does ``launch --cold``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

from gureum.errors import Conflict, EngineError, GureumError, InvalidInput, Timeout
from gureum.ids import new_id
from gureum.model.image import Image
from gureum.model.instance import Instance
from gureum.model.operation import Operation
from gureum.model.template import SavedTemplate, Shape, Template
from gureum.model.tenancy import Project
from gureum.service.images import ImageService
from gureum.service.instances import InstanceService, LaunchRequest
from gureum.service.lifecycle import Lifecycle
from gureum.service.networks import DEFAULT_NETWORK, NO_NETWORK, NetworkService
from gureum.service.operations import OpContext, OperationManager, Reporter
from gureum.service.pool import Pool
from gureum.service.snapshots import SnapshotService
from gureum.store.templates import TemplateStore
from gureum.store.tenancy import TenancyStore

log = logging.getLogger(__name__)

TEMPLATES_PROJECT = "p-templates"
# What only the administrator sees of a template (every project's clones are counted in it).
PRIVATE_FIELDS = ("clones", "instance_id", "snapshot_id")
TEMPLATES_PROJECT_NAME = "(templates)"  # not a name check_name lets a user's project take
# An ordinary snapshot's name: those named as gureum's own passing ones are dropped at start.
SNAPSHOT_NAME = "template"
# After the guest agent answers, boot-time work (DHCP, services starting) goes on a moment:
# the template is saved once it has, so no clone repeats it.
SETTLE_S = 2.0
LAUNCH_TIMEOUT_S = 900.0
MAX_TEMPLATE_NICS = 4
# Templates made by auto_templates per image version, at most (others: `image template`).
AUTO_TEMPLATES_PER_IMAGE = 2


def shape_of(req: LaunchRequest) -> Shape:
    nets = req.networks or (DEFAULT_NETWORK,)
    return Shape(req.cpus, req.memory_mib, 0 if NO_NETWORK in nets else len(nets))


class TemplateService:
    def __init__(
        self,
        store: TemplateStore,
        tenancy: TenancyStore,
        images: ImageService,
        instances: InstanceService,
        snapshots: SnapshotService,
        lifecycle: Lifecycle,
        networks: NetworkService,
        ops: OperationManager,
        pool: Pool,
        auto: bool = False,
    ) -> None:
        self.pool = pool
        # Make a template after a launch that booted for want of one (config auto_templates).
        self.auto = auto
        self._auto_made: set[tuple[str, str, Shape]] = set()
        # Launches between finding a template and their instance's row, and templates being
        # removed (``_closed``), by template id.
        self._launching: Counter[str] = Counter()
        self._going: Counter[str] = Counter()
        self._settled = asyncio.Condition()
        self.networks = networks
        self.store = store
        self.tenancy = tenancy
        self.images = images
        self.instances = instances
        self.snapshots = snapshots
        self.lifecycle = lifecycle
        self.ops = ops

    # -- launch ----------------------------------------------------------------------------------
    def find(self, req: LaunchRequest) -> SavedTemplate | None:
        """The template a launch can be cloned from, with its saved machine: of the image's
        current version, the same shape, and the image's own disk size (a larger disk boots
        cold)."""
        image = self.images.store.get(req.image)  # a missing one: the launch says so
        if image is None:
            return None
        tpl = self.store.find(image.name, image.version, shape_of(req))
        if tpl is None or req.disk_bytes not in (None, tpl.disk_bytes) or self._going[tpl.id]:
            return None
        saved = self.snapshots.store.by_id(tpl.snapshot_id)
        if saved is None or not saved.memory:
            # Its machine or snapshot was deleted by hand: a launch boots instead of failing.
            log.warning("template %s has lost its saved machine; launches boot", tpl.id)
            return None
        return SavedTemplate(tpl, saved)

    async def launch(
        self, req: LaunchRequest, project_id: str, *, cold: bool = False
    ) -> tuple[Instance, Operation]:
        """A launch: from the image's template when one fits (and not ``cold``), in a QEMU of
        the pool when one waits for it, else a boot."""
        cold = cold or req.container  # a container starts in milliseconds without one
        # A joined host boots: the template's machine is on this one.
        cold = cold or (req.host is not None and req.host != self.instances.creator.hosts.name)
        saved = None if cold else self.find(req)
        if saved is None:
            made = await self.instances.launch(req, project_id)
            if self.auto and not cold:
                self._make_for(req)
            return made
        self.instances.validate(req, project_id)  # a bad request takes nothing from the pool
        tpl_id = saved.template.id
        self._launching[tpl_id] += 1  # until its instance's row names the template
        try:
            waiting = self.pool.take(tpl_id)
            try:
                made = await self.instances.launch(req, project_id, saved=saved, waiting=waiting)
            except BaseException:
                if waiting is not None:  # refused before it was made (a quota, say): not used
                    await self.pool.give_back(waiting)
                raise
        finally:
            self._launching[tpl_id] -= 1
            async with self._settled:
                self._settled.notify_all()
        if waiting is not None:
            self.pool.used(waiting)
        return made

    @contextlib.asynccontextmanager
    async def _closed(self, tpls: builtins.list[Template]) -> AsyncIterator[None]:
        """While held, no launch finds these templates (they boot instead), and none that found
        one is still on its way to its instance's row, after which its clone counts: a template
        is never removed under a clone being made."""
        for tpl in tpls:
            self._going[tpl.id] += 1
        try:
            async with self._settled:
                await self._settled.wait_for(lambda: not any(self._launching[t.id] for t in tpls))
            yield
        finally:
            for tpl in tpls:
                self._going[tpl.id] -= 1

    def _make_for(self, req: LaunchRequest) -> None:
        """After a launch that booted (``auto``): make the template of its shape in the
        background, once per image version and shape, where a template can be made of the
        image and the launch asked for the image's own disk size; why not, in the log."""
        image = self.images.store.get(req.image)
        shape = shape_of(req)
        # Templates are of the host's catalog: a project's image is its project's alone.
        if image is None or image.project_id is not None or req.disk_bytes is not None:
            return
        key = (image.name, image.version, shape)
        tried = [k for k in self._auto_made if k[:2] == key[:2]]
        if key in self._auto_made or shape.nics > MAX_TEMPLATE_NICS:
            return
        if len(tried) >= AUTO_TEMPLATES_PER_IMAGE:
            # The shapes are the launching tenants' to choose: a bounded number of templates
            # (and pools of waiting QEMUs) per image version, whatever they ask.
            return
        self._auto_made.add(key)  # one try per service run: a failure is not retried
        try:
            op = self.make(image.name, shape.cpus, shape.memory_mib, shape.nics)
        except GureumError as exc:
            log.info("no template of %s %s made: %s", image.name, shape.key, exc.message)
            return
        log.info("making the template of %s %s (%s), after its first launch", image.name,
                 shape.key, op.id)  # fmt: skip

    # -- making and removing ---------------------------------------------------------------------
    def make(self, image_name: str, cpus: int, memory_mib: int, nics: int = 1) -> Operation:
        """Boot the image once in the templates project, let it settle, save it running, and
        keep the saved machine as the image's template of this shape (an operation). Of the
        host's catalog only: a project's own image is refused, as if it did not exist."""
        image = self.images.get(image_name, (TEMPLATES_PROJECT,))
        if not 0 <= nics <= MAX_TEMPLATE_NICS:
            raise InvalidInput(f"a template has 0 to {MAX_TEMPLATE_NICS} NICs, not {nics}")
        shape = Shape(cpus, memory_mib, nics)
        req = LaunchRequest(
            name=f"{image.name}-{image.version[:12]}-{shape.key}",
            image=image.name,
            cpus=cpus,
            memory_mib=memory_mib,
            networks=(DEFAULT_NETWORK,) * nics if nics else (NO_NETWORK,),
        )
        self.instances.validate(req, TEMPLATES_PROJECT)  # bad sizes: refused before the op
        if self.store.find(image.name, image.version, shape) is not None:
            raise Conflict(f"image {image.name!r} already has a template of shape {shape.key}")

        async def work(ctx: OpContext) -> dict[str, object]:
            return {"template": (await self._make(image, shape, req, ctx)).to_dict()}

        return self.ops.start("image-template", image.name, work)

    async def _make(
        self, image: Image, shape: Shape, req: LaunchRequest, ctx: Reporter
    ) -> Template:
        if self.tenancy.project(TEMPLATES_PROJECT) is None:
            self.tenancy.add_project(
                Project(TEMPLATES_PROJECT, TEMPLATES_PROJECT_NAME, time.time())
            )
        inst, boot = await self.instances.launch(req, TEMPLATES_PROJECT)
        try:
            ctx.progress(f"booting {image.name} {image.version} as {shape.key} ({inst.id})")
            await self._finished(boot)
            ctx.progress("booted; its first-boot work finishing (cloud-init, if it has it)")
            await self.instances.host.seal_template(inst.id)
            ctx.progress(f"letting it settle for {SETTLE_S:g} s")
            await asyncio.sleep(SETTLE_S)
            await self.snapshots.create_now(inst.id, SNAPSHOT_NAME, True, ctx, internal=True)
            ctx.progress("saved; stopping the template's own machine")
            await self.lifecycle.stop(inst.id, ctx)
            _, snap = self.snapshots.get(inst.id, SNAPSHOT_NAME)
            tpl = Template(
                id=new_id("t-"),
                image=image.name,
                image_version=image.version,
                shape=shape,
                disk_bytes=inst.spec.disk_bytes,
                instance_id=inst.id,
                snapshot_id=snap.id,
                size_bytes=snap.size_bytes,
                created_at=time.time(),
            )
            self.store.add(tpl)
            self.pool.wake()  # a template the pool may keep QEMUs for
        except BaseException:
            await self.instances.delete(inst.id, force=True)
            raise
        ctx.progress(f"template {tpl.id} ready")
        return tpl

    async def _finished(self, op: Operation) -> None:
        try:
            op = await self.ops.finished(op.id, LAUNCH_TIMEOUT_S)
        except Timeout:
            raise Timeout(f"the template's boot did not finish in {LAUNCH_TIMEOUT_S:g} s") from None
        if op.error is not None:
            raise EngineError(f"the template's boot failed: {op.error.get('message')}")

    def list(self, image: str | None = None, *, detail: bool = True) -> list[dict[str, object]]:
        """The templates, each with its number of clones; without ``detail`` (a user who is
        not the administrator) only the shape and when it was made: how many clones there are,
        in every project, and the machine's ids are the administrator's to know."""
        shown = []
        for tpl in self.store.list(image):
            view = {**tpl.to_dict(), "clones": self.store.clones(tpl.id)}
            if not detail:
                view = {k: v for k, v in view.items() if k not in PRIVATE_FIELDS}
            shown.append(view)
        return shown

    async def drop_orphans(self) -> builtins.list[str]:
        """Machines of the templates project no template names (an ``image template`` cut
        short by a restart): deleted at start, so nothing hidden holds capacity or an image."""
        named = {t.instance_id for t in self.store.list()}
        dropped = []
        for inst in self.instances.store.list(TEMPLATES_PROJECT):
            if inst.id not in named:
                await self.instances.delete(inst.id, force=True)
                dropped.append(f"unfinished template machine {inst.name} deleted")
        return dropped

    async def remove(self, image: str) -> builtins.list[str]:
        """Delete the image's templates that no instance was cloned from (their machines, disk
        layers and memory); when no template is left at all, the templates project's networks
        too. Returns the ids removed."""
        self.images.get(image)
        removed = []
        tpls = self.store.list(image)
        async with self._closed(tpls):
            for tpl in tpls:
                if self.store.clones(tpl.id):
                    continue  # its layer is under a clone's disk: it goes with the last clone
                await self.pool.drain(tpl.id)
                if self.instances.store.get(tpl.instance_id) is not None:  # else deleted by hand
                    await self.instances.delete(tpl.instance_id, force=True)
                self.store.remove(tpl.id)
                removed.append(tpl.id)
        if not self.store.list():
            for net in self.networks.list(TEMPLATES_PROJECT):
                await self.networks.delete(net.id, TEMPLATES_PROJECT)
        return removed

    async def delete_image(self, name: str) -> Image:
        """An image and its templates: refused while any instance but the templates' own
        machines uses it (clones included)."""
        image = self.images.get(name)
        tpls = self.store.list(name)
        async with self._closed(tpls):  # no clone of them is half made while users are counted
            users = self.instances.store.count_using_image(name, image.project_id) - len(tpls)
            if users > 0:
                raise Conflict(f"image {name!r} is used by {users} instance(s); delete them first")
            await self.remove(name)
            return self.images.delete(name)
