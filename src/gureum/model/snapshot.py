"""Snapshots and disk layers."""

from __future__ import annotations

from dataclasses import dataclass

from gureum.model.hardware import Hardware

# ``Layer.base_image`` of a bottom layer recorded before the store kept it (migration 6), until
# the service settles it at start.
UNSETTLED_BASE = "?"
# ``Snapshot.layer`` of a container's snapshot: no qcow2 layer; the host keeps a copy of the
# container's own layer under the snapshot's id, as it keeps a VM's memory image.
CONTAINER_LAYER = ""


@dataclass(frozen=True)
class Layer:
    """One qcow2 file. A VM's disk is a chain: its top layer, that layer's backing, and so on
    down to the image's base disk. A layer under another never changes again."""

    id: str
    instance_id: str | None  # who made it (informational: clones share their source's layers)
    path: str  # relative to GUREUM_HOME
    backing: str | None  # the layer below, or None at the bottom of the chain
    created_at: float
    # At the bottom only: the image disk under it (relative to GUREUM_HOME), or None for a
    # standalone bottom (an imported disk). The store's word, never the file header's: chains
    # are passed to QEMU and qemu-img explicitly from these two fields.
    base_image: str | None = None
    # The host its file is on (None: the control plane's own). A layer never moves: a clone and
    # a snapshot stay on the host of the disk they build on.
    host: str | None = None


@dataclass(frozen=True)
class Snapshot:
    id: str
    instance_id: str
    name: str
    layer: str  # the frozen disk layer holding the disk as it was (CONTAINER_LAYER: none)
    memory: bool  # with memory: the VM resumes where it was
    consistency: str  # "offline", "fsfreeze", "paused" (memory) or "crash-consistent"
    hardware: Hardware  # the machine at that moment (a memory restore needs the same)
    disk_bytes: int
    size_bytes: int  # bytes this snapshot added on the host (its layer + memory files)
    created_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "instance_id": self.instance_id,
            "name": self.name,
            "memory": self.memory,
            "consistency": self.consistency,
            "cpus": self.hardware.total_cpus,
            "memory_mib": self.hardware.total_memory_mib,
            "disk_gib": round(self.disk_bytes / 1024**3, 3),
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
        }
