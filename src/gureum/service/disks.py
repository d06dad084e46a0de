"""A VM's disk as a chain of layers: the store's record of it, and its files on the host.

A VM's disk is a chain of qcow2 layers (see ``model/snapshot.py``): the instance points at its
top layer; snapshots freeze layers; layers nobody builds on any more are collected. The chain
QEMU and the host's tools are given is always the one the store recorded, never the backing
names written in the files' own headers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from gureum.config import Config
from gureum.errors import EngineError, GureumError, InvalidState, NotFound
from gureum.ids import new_id
from gureum.model.instance import Instance
from gureum.model.snapshot import UNSETTLED_BASE, Layer
from gureum.service.host_router import HostRouter
from gureum.service.images import ImageService
from gureum.store.instances import InstanceStore
from gureum.store.layers import LayerStore, SnapshotStore

log = logging.getLogger(__name__)


def layer_file(layer_id: str) -> str:
    """Where a layer's file is, relative to GUREUM_HOME."""
    return f"disks/{layer_id}.qcow2"


class DiskLayers:
    def __init__(
        self,
        config: Config,
        layers: LayerStore,
        snapshots: SnapshotStore,
        instances: InstanceStore,
        images: ImageService,
        host: HostRouter,
    ) -> None:
        self.config = config
        self.store = layers
        self.snapshots = snapshots
        self.instances = instances
        self.images = images  # an image's boot (its kernel, or the firmware)
        self.host = host
        # (joined host, image, version) this control plane has had that host fetch and check.
        self._images_on: set[tuple[str, str, str]] = set()

    def image_folder(self, inst: Instance) -> Path:
        """The folder of the image version the instance was made from: where the store says it
        is (a project's own image is apart from the catalog), else where the catalog keeps it."""
        image = self.images.of_instance(inst)
        if not self.host.is_local(inst.host):  # a catalog image's copy there (``image_pull``)
            if image is not None and image.project_id is not None:
                raise InvalidState(
                    f"{inst.name} is on joined host {inst.host}, where a project's own image "
                    "is not supported yet"
                )
            relative = Path(self.config.images_dir).relative_to(self.config.home)
            return self.host.path_on(
                inst.host, str(relative / inst.spec.image / inst.image_version)
            )
        if image is not None and image.version == inst.image_version:
            return Path(image.path)
        return Path(self.config.images_dir) / inst.spec.image / inst.image_version

    async def bring_image(self, inst: Instance) -> None:
        """A joined host holds the catalog image ``inst`` is made from, as the catalog recorded
        it (its agent fetches and checks what it lacks: ``host/image_pull.py``)."""
        image = self.images.of_instance(inst)
        if image is None or image.version != inst.image_version or image.project_id is not None:
            raise InvalidState(
                f"{inst.name} is on joined host {inst.host}, which can be given the catalog's "
                f"current images only, not {inst.spec.image} {inst.image_version}"
            )
        key = (str(inst.host), image.name, image.version)
        if key in self._images_on:  # brought there already by this control plane
            return
        await self.host.remote(key[0]).ensure_image(image.name, image.version, image.files)
        self._images_on.add(key)

    def forget_images_on(self, host: str | None) -> None:
        """After a start there failed: the next one checks the host's images again (one may
        have gone)."""
        self._images_on = {k for k in self._images_on if k[0] != host}

    def private_image_files(self, inst: Instance) -> list[Path]:
        """The files of a project's own image its VM was given read on (the catalog's are
        every VM's): taken back when the VM goes."""
        image = self.images.of_instance(inst)
        if image is None or image.project_id is None:
            return []
        return [image.file(role) for role in image.files]

    def image_disk(self, inst: Instance) -> Path:
        return self.image_folder(inst) / "disk.qcow2"

    def boot_folder(self, inst: Instance) -> Path:
        """Where the VM's kernel and initramfs are: its image's, or for a machine imported from
        a backup its own (an import never writes into the shared image store)."""
        return self.host.own_boot_files(inst.id) or self.image_folder(inst)

    def boot_files(self, inst: Instance) -> tuple[Path, Path] | None:
        """(kernel, initramfs) QEMU boots directly; None when the firmware boots the disk's own
        bootloader: an imported image's VM, or a machine imported without boot files."""
        own = self.host.own_boot_files(inst.id)
        if own is None:
            image = self.images.of_instance(inst)
            if image is None or image.boot == "firmware":
                return None
        folder = own or self.image_folder(inst)
        return folder / "vmlinuz", folder / "initrd.img"

    def layer_path(self, layer_id: str) -> Path:
        layer = self.store.get(layer_id)
        if layer is None:
            raise NotFound(f"disk layer {layer_id} is missing from the store")
        return self.file(layer)

    def file(self, layer: Layer) -> Path:
        """A layer's file, on the host the store recorded it on."""
        return self.host.path_on(layer.host, layer.path)

    def chain(self, layer_id: str) -> tuple[Path, ...]:
        """The files of a disk whose top is ``layer_id``, top first, down to the image disk
        under its bottom layer if it has one: what QEMU and the host's tools are given,
        explicitly, instead of the backing names written in the files' headers."""
        chain = self.store.chain(layer_id)
        if not chain or chain[-1].backing is not None:
            raise NotFound(f"disk layer {chain[-1].backing if chain else layer_id} is missing")
        paths = [self.file(layer) for layer in chain]
        bottom = chain[-1]
        if bottom.base_image == UNSETTLED_BASE:
            raise EngineError(f"disk layer {bottom.id} has no recorded base yet")
        if bottom.base_image:
            paths.append(self.host.path_on(bottom.host, bottom.base_image))
        return tuple(paths)

    def below_top(self, inst: Instance) -> list[Path]:
        """The files under a VM's top layer (others, a clone's source, may share them)."""
        chain = self.store.chain(inst.root_layer) if inst.root_layer else []
        return [self.file(layer) for layer in chain[1:]]

    def settle_base_images(self) -> list[str]:
        """Layers recorded before the store kept each bottom layer's base (migration 6): read
        once from the file whether it was made over an image, and record which image the store
        says (never the path the header names)."""
        settled = []
        instances = {inst.id: inst for inst in self.instances.list()}
        for layer in self.store.all().values():
            if layer.base_image != UNSETTLED_BASE:
                continue
            owner = instances.get(layer.instance_id or "") or next(
                (instances[i] for i in self.store.users(layer.id) if i in instances), None
            )
            path = self.file(layer)
            if owner is not None and self.host.names_backing_file(path):
                base = self.image_disk(owner)
                self.store.set_base_image(layer.id, str(base.relative_to(self.config.home)))
            else:
                self.store.set_base_image(layer.id, None)
            settled.append(f"layer {layer.id}: base recorded")
        return settled

    def new_base(self, inst: Instance) -> Layer:
        """The record of a standalone bottom layer for ``inst`` (an imported disk)."""
        layer_id = new_id("l-")
        return Layer(layer_id, inst.id, layer_file(layer_id), None, time.time(), None)

    async def new_top(
        self, inst: Instance, *, on: str | None, size_bytes: int, live: bool = False
    ) -> Layer:
        """Give ``inst`` a new, empty top layer over layer ``on`` (None: the image's disk).

        The record is written before the file exists (a crash leaves a row the reconciler
        repairs, never a disk the store does not know); ``live`` means the running QEMU makes
        the file itself and switches to it (an external snapshot).
        """
        previous = inst.root_layer
        layer = self._on_top(inst, new_id("l-"), on)
        path = self.file(layer)
        try:
            if live:
                await self.host.snapshot_disk_live(inst.id, path)
            else:
                backing = self.layer_path(on) if on else self.image_disk(inst)
                await self.host.create_disk(path, backing, size_bytes)
        except GureumError:
            self.instances.update(inst.id, root_layer=previous)
            inst.root_layer = previous
            self.store.remove(layer.id)
            await self.host.remove_file(path)
            raise
        return layer

    def new_file(self) -> tuple[str, Path]:
        """A new layer's id and file, for a disk made before its instance exists (a QEMU
        waiting in the pool): ``adopt_top`` records it then."""
        layer_id = new_id("l-")
        return layer_id, self.host.path(layer_file(layer_id))

    def adopt_top(self, inst: Instance, layer_id: str, on: str) -> Layer:
        """Record ``new_file``'s layer, made over layer ``on``, as ``inst``'s top."""
        return self._on_top(inst, layer_id, on)

    def _on_top(self, inst: Instance, layer_id: str, on: str | None) -> Layer:
        base = None if on else self._relative(inst, self.image_disk(inst))
        host = None if self.host.is_local(inst.host) else inst.host
        layer = Layer(layer_id, inst.id, layer_file(layer_id), on, time.time(), base, host)
        self.store.add_on_top(layer, inst.id)
        inst.root_layer = layer_id
        return layer

    async def collect(self) -> list[str]:
        """Delete the files of layers that no disk and no snapshot builds on any more."""
        gone = []
        for layer in self.store.unreachable():
            try:
                await self.host.remove_file(self.file(layer))
            except GureumError as exc:  # its host is away: its row stays, for the next pass
                log.warning("cannot remove disk layer %s yet: %s", layer.id, exc.message)
                continue
            self.store.remove(layer.id)
            gone.append(layer.id)
        return gone

    def known_files(self) -> set[Path]:
        """Every disk layer the store knows on this host (the reconciler keeps them)."""
        return {
            self.file(layer)
            for layer in self.store.all().values()
            if self.host.is_local(layer.host)
        }

    def _relative(self, inst: Instance, path: Path) -> str:
        """A file of ``inst``'s host, as the store records it (relative to a home)."""
        return str(path.relative_to(self.host.path_on(inst.host, "")))
