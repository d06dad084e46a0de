"""Templates: an image booted once and kept running-as-saved (disk layer and memory), so that a
launch of the same shape is a clone of it instead of a boot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from gureum.model.snapshot import Snapshot


@dataclass(frozen=True)
class Shape:
    """What a template's saved machine fixes: a clone resumes exactly this machine."""

    cpus: int
    memory_mib: int
    nics: int  # NICs present at boot; a clone puts each on a network of its own choosing

    @property
    def key(self) -> str:
        return f"{self.cpus}c-{self.memory_mib}m-{self.nics}n"


@dataclass(frozen=True)
class Template:
    id: str  # "t-..."
    image: str
    image_version: str  # a template of another version of the image is never cloned
    shape: Shape
    disk_bytes: int
    instance_id: str  # the stopped machine it was saved from, in the templates project
    snapshot_id: str  # that machine's memory snapshot: what every clone resumes
    size_bytes: int  # bytes it holds on the host (its disk layer and memory files)
    created_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "image": self.image,
            "image_version": self.image_version,
            "cpus": self.shape.cpus,
            "memory_mib": self.shape.memory_mib,
            "nics": self.shape.nics,
            "disk_bytes": self.disk_bytes,
            "instance_id": self.instance_id,
            "snapshot_id": self.snapshot_id,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
        }


class SavedTemplate(NamedTuple):
    """A template found for a launch, with its saved machine (read once, where it was found)."""

    template: Template
    snapshot: Snapshot  # the memory snapshot every clone resumes


@dataclass(frozen=True)
class Waiting:
    """A QEMU started ahead of a launch from a template (the host's pool), with all of the VM
    that takes it chosen before anyone asked: its id, user, disk layer and vmgenid. Nothing of
    it ran yet: the guest's state is loaded only when a launch takes it."""

    template_id: str
    instance_id: str
    uid: int
    layer_id: str  # its own disk layer over the template's, recorded once it is taken
    generation_id: str
    # Its NICs' MACs, by slot: QEMU's (a guest reset takes them again), so the instance's too.
    macs: tuple[tuple[int, str], ...]
    pid: int
    started_at: float
