"""Images a project makes from its own instances (EC2's CreateImage, ``gureum image create``).

The instance's disk is copied through an internal snapshot, so a running VM keeps running (its
filesystems frozen for the instant the snapshot takes, where its agent answers), and flattened
from the chain the store records, never from the backing names in the files' headers. The new
image belongs to the project: its members see and launch it, nobody else does (404), and each
counts against the project's snapshot quota, since each is a saved disk.
"""

from __future__ import annotations

import time
from pathlib import Path

from gureum.errors import InvalidInput
from gureum.host.interface import HostAgent
from gureum.model.image import Image
from gureum.model.instance import Instance, check_action
from gureum.model.operation import Operation
from gureum.service.admission import Admission
from gureum.service.disks import DiskLayers
from gureum.service.images import ImageService
from gureum.service.instances import InstanceService
from gureum.service.operations import OpContext, OperationManager
from gureum.service.quotas import QuotaService
from gureum.service.snapshots import SnapshotService

MAX_DESCRIPTION = 255  # EC2's limit on an image's description


class ImageCapture:
    def __init__(
        self,
        images: ImageService,
        instances: InstanceService,
        snapshots: SnapshotService,
        disks: DiskLayers,
        admission: Admission,
        quotas: QuotaService,
        ops: OperationManager,
        host: HostAgent,
    ) -> None:
        self.images, self.instances, self.snapshots = images, instances, snapshots
        self.disks, self.admission, self.quotas = disks, admission, quotas
        self.ops, self.host = ops, host

    async def capture(
        self, ref: str, name: str, project_id: str, description: str = ""
    ) -> Operation:
        """Start making image ``name`` of the project from its instance ``ref`` (a VM, running
        or stopped): an operation whose result is ``{"image": ...}``. Everything that can be
        refused is refused here, before the operation starts."""
        inst = self.instances.get(ref, project_id)
        inst.needs_vm("an image")  # a container's layer is no disk another VM boots
        if len(description) > MAX_DESCRIPTION or not description.isprintable():
            raise InvalidInput(
                f"an image description is at most {MAX_DESCRIPTION} printable characters"
            )
        check_action("snapshot", inst.state, name=inst.name)
        # The name, then the quota, then a copy slot: each given back if a later one refuses.
        release_name = self.images.reserve(name, project_id)  # no await since its check
        try:
            async with self.admission:
                self.quotas.check(project_id, snapshots=1)
                release_quota = self.quotas.hold(project_id, snapshots=1)
        except BaseException:
            release_name()
            raise
        try:
            # A copy is a transfer: a bounded number at once per project, as exports are.
            release_slot = self.images.transfers.take(project_id)
        except BaseException:
            release_quota()
            release_name()
            raise

        async def work(ctx: OpContext) -> dict[str, object]:
            ctx.progress("taking a snapshot of the disk", 0.05)
            folder = self.images.new_folder(name, project_id)
            try:
                image = await self._copy(inst, name, project_id, description, folder, ctx)
            except BaseException:
                # Whatever failed (the copy, the store, the snapshot's removal after the
                # instance was deleted meanwhile): no file of it stays, counted by no quota.
                self.host.remove_image(folder)
                raise
            ctx.progress("done", 1.0)
            # The host's path is its administrator's (GET /v1/images/{image} shows it to them).
            return {"image": {**image.to_dict(), "path": None}}

        return self.ops.start(
            "image-create", inst.id, work, project_id,
            then=lambda: (release_slot(), release_quota(), release_name()),
        )  # fmt: skip

    async def _copy(
        self,
        inst: Instance,
        name: str,
        project_id: str,
        description: str,
        folder: Path,
        ctx: OpContext,
    ) -> Image:
        """The disk (and boot files) copied into ``folder`` and recorded as the image."""
        async with self.snapshots.internal(inst.id, "image") as snap:
            ctx.progress("copying the disk", 0.2)
            files = await self.host.capture_image(
                self.disks.chain(snap.layer), self.disks.boot_files(inst), folder
            )
            disk_bytes = snap.disk_bytes
        source = self.images.of_instance(inst)
        image = Image(
            name=name,
            version=folder.name,
            kernel_version=source.kernel_version if source and "kernel" in files else "",
            path=str(folder),
            files=files,
            packages=source.packages if source else {},
            disk_virtual_bytes=disk_bytes,
            built_at=time.time(),
            default_user=self.images.default_user(inst),
            origin=f"from instance {inst.name} ({inst.id})",
            firmware=source.firmware if source and "kernel" not in files else None,
            project_id=project_id,
            description=description,
        )
        self.images.store.put(image)
        return image
