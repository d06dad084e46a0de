"""Image use cases: build (an operation), list, show, verify, delete."""

from __future__ import annotations

import asyncio
import builtins
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import replace
from pathlib import Path

from gureum.config import Config
from gureum.errors import Conflict, InvalidArchive, InvalidInput, InvalidState, NotFound
from gureum.host.interface import HostAgent
from gureum.ids import check_name
from gureum.images import build as builder
from gureum.images import recipes
from gureum.model.hardware import FIRMWARES
from gureum.model.image import Image
from gureum.model.instance import Instance
from gureum.model.operation import Operation
from gureum.service.operations import OpContext, OperationManager
from gureum.service.transfers import UPLOAD_IDLE_S, UPLOAD_MIN_BYTES, Transfers
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore

# A Linux user name (useradd's default rule): who `gureum ssh` logs in as on an imported image.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SYSTEM = "images"  # the catalog's transfers count apart from any project's


def visible(image: Image, projects: Collection[str] | None) -> bool:
    """Whether a caller in ``projects`` (None: the service or the administrator) sees the
    image: the host's catalog is everyone's, a project's image its members' alone."""
    return projects is None or image.project_id is None or image.project_id in projects


class ImageService:
    def __init__(
        self,
        config: Config,
        store: ImageStore,
        instances: InstanceStore,
        ops: OperationManager,
        host: HostAgent,
        transfers: Transfers,
    ) -> None:
        self.config = config
        self.store = store
        self.instances = instances
        self.ops = ops
        self.host = host
        self.transfers = transfers
        # Names being made, not in the store yet (an import, a capture) -> the project making
        # it (None: the host's catalog).
        self._reserved: dict[str, str | None] = {}

    def list(self, projects: Collection[str] | None = None) -> list[Image]:
        """The catalog and the images of ``projects`` (None: every image)."""
        return [i for i in self.store.list() if visible(i, projects)]

    def get(self, name: str, projects: Collection[str] | None = None) -> Image:
        """The image ``name`` as a caller in ``projects`` sees it (None: the service itself):
        another project's image is not found, as if it did not exist."""
        image = self.store.get(name)
        if image is None or not visible(image, projects):
            hint = (
                f"; build it with `gureum image build {name}`"
                if name in recipes.DESCRIPTIONS
                else ""
            )
            raise NotFound(f"no image named {name!r}{hint}")
        return image

    def build(self, name: str) -> Operation:
        recipes.check(name)
        running = self.ops.running("image-build", name)
        if running is not None:
            return running  # one build per image at a time; a second caller follows the first

        async def work(ctx: OpContext) -> dict[str, object]:
            loop = asyncio.get_running_loop()
            b = recipes.builder(
                name, self.config.images_dir, self.config.cache_dir, ctx.progress_threadsafe(loop)
            )
            image, built = await asyncio.to_thread(b.build, self.store.get(name))
            if built:
                self.store.put(image)
            ctx.progress("done" if built else "already up to date", 1.0)
            return {"image": image.to_dict(), "built": built}

        return self.ops.start("image-build", name, work)

    def verify(self, name: str) -> Operation:
        """Re-check every file of an image against its recorded checksum. An operation, with a
        progress line a file (reading a whole image takes a while); its result is
        ``{name, ok, problems}``."""
        image = self.get(name)

        async def work(ctx: OpContext) -> dict[str, object]:
            problems: builtins.list[str] = []
            for done, role in enumerate(image.files):
                ctx.progress(f"checking {role}", done / len(image.files))
                one = replace(image, files={role: image.files[role]})
                problems += await asyncio.to_thread(builder.verify, one)
            ctx.progress(f"{len(problems)} problem(s)" if problems else "intact", 1.0)
            return {"name": name, "ok": not problems, "problems": problems}

        return self.ops.start("image-verify", name, work)

    async def import_(
        self,
        body: AsyncIterator[bytes],
        name: str,
        default_user: str | None = None,
        firmware: str | None = None,
    ) -> Image:
        """A disk image file a user brings (qcow2 or raw, booting from its own bootloader),
        checked before anything is kept (``HostAgent.import_image``) and put in the catalog
        under ``name``, with a version of its own and the checksum of the stored disk.
        ``firmware`` (bios, uefi) overrides what the disk's first sectors show."""
        self.check_new_name(name)
        if default_user is not None and not USER_NAME.fullmatch(default_user):
            raise InvalidInput(f"{default_user!r} is not a Linux user name")
        if firmware is not None and firmware not in FIRMWARES:
            raise InvalidInput(f"firmware is one of {', '.join(FIRMWARES)}, not {firmware!r}")
        release = self.transfers.take(SYSTEM)
        unreserve = self.reserve(name, None)  # no await from the check to here
        folder = self.new_folder(name)
        try:
            facts = await self.host.import_image(
                body, folder, max_bytes=self.config.image_import_max_bytes,
                idle_timeout=UPLOAD_IDLE_S, min_bytes=UPLOAD_MIN_BYTES,
            )  # fmt: skip
            image = Image(
                name=name,
                version=folder.name,
                kernel_version="",
                path=str(folder),
                files={"disk": facts["file"]},
                disk_virtual_bytes=facts["virtual_bytes"],
                built_at=time.time(),
                default_user=default_user,
                origin=f"imported {facts['format']}",
                firmware=firmware or facts["firmware"],
            )
            try:
                self.store.put(image)
            except BaseException:
                self.host.remove_image(folder)
                raise
            return image
        finally:
            unreserve()
            release()

    # -- names -----------------------------------------------------------------------------------
    def check_new_name(self, name: str) -> None:
        """Refuse a name a new image cannot take. Image names are one namespace on the host,
        the catalog's and every project's (as bucket names are in S3): a name another project
        took is refused too, without saying more than that it is taken."""
        check_name(name, what="image name")
        if name in recipes.DESCRIPTIONS:
            raise InvalidInput(f"{name!r} is an image gureum builds: choose another name")
        if self.store.get(name) is not None or name in self._reserved:
            raise Conflict(
                f"an image named {name!r} already exists (image names are one namespace on "
                "the host); choose another"
            )

    def reserve(self, name: str, project_id: str | None) -> Callable[[], None]:
        """Hold ``name`` for an image being made (checked with ``check_new_name`` just before,
        with no await between); returns the release."""
        self.check_new_name(name)
        self._reserved[name] = project_id

        def release() -> None:
            self._reserved.pop(name, None)

        return release

    def pending(self, project_id: str) -> builtins.list[str]:
        """The names of the images the project is making."""
        return sorted(n for n, p in self._reserved.items() if p == project_id)

    def new_folder(self, name: str, project_id: str | None = None) -> Path:
        """Where a new version of image ``name`` goes (its version is the folder's name): a
        project's own images apart from the catalog, whose files every VM may read."""
        top = self.config.images_dir if project_id is None else self.config.project_images_dir
        return top / name / secrets.token_hex(6)

    def check_named(self, name: str, project_id: str) -> None:
        """Refuse (InvalidArchive) a machine brought into ``project_id`` that names another
        project's image: it may name the catalog's, its own project's, or no image at all."""
        image = self.store.get(name)
        if image is not None and not visible(image, (project_id,)):
            raise InvalidArchive(
                f"the manifest names image {name!r}, another project's: this project cannot use it"
            )

    def of_instance(self, inst: Instance) -> Image | None:
        """The image an instance was made from, as its project sees it: None when it is gone,
        or is another project's (an imported backup may name any image: only a name)."""
        image = self.store.get(inst.spec.image)
        return image if image is not None and visible(image, (inst.project_id,)) else None

    def default_user(self, inst: Instance) -> str:
        """Who ``gureum ssh`` logs in as on the instance: its image's recorded user (an
        imported one's, or the VM's an image was made from), a built one's cloud-init default
        user, else root."""
        image = self.of_instance(inst)
        if image is not None and image.default_user:
            return image.default_user
        return recipes.default_user(inst.spec.image)

    def export_path(self, name: str) -> Path:
        """The disk file of an image that boots by itself (an imported one)."""
        image = self.get(name)
        if image.boot != "firmware":
            raise InvalidState(
                f"image {name!r} is built by gureum and boots its kernel directly: its disk has "
                "no bootloader for another QEMU to start (export a VM of it with `gureum "
                "backup export` instead)"
            )
        return image.file("disk")

    def delete(self, name: str) -> Image:
        image = self.get(name)
        users = self.instances.count_using_image(name, image.project_id)
        if users:
            raise Conflict(f"image {name!r} is used by {users} instance(s); delete them first")
        self.store.delete(name)
        builder.remove(image)
        return image
