"""Containers in the service (issue 14, part 2): the same launch, states and rules as a VM, on a
``FakeHost``; what only a VM has is refused by name; a container of an imported image is
refused before anything is made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gureum.errors import InvalidInput, VMOnly
from gureum.model.image import Image
from gureum.model.instance import DEFAULT_PROJECT, State
from gureum.model.operation import Operation
from gureum.model.snapshot import CONTAINER_LAYER
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from gureum.store.instances import CONTAINER_UID_BASE, CONTAINER_UID_RANGE, VM_UID_BASE
from gureum.units import MIB
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_services

# A launch of a container asks the host for no disk layer and no QEMU of the pool.
CONTAINER_STEPS = ["ensure_network", "sync_network", "sync_network", "claim_waiting", "start",
                   "wait_ready"]  # fmt: skip


async def launch(svc: Services, name: str, container: bool = True, image: str = "tiny") -> None:
    req = LaunchRequest(name, image, memory_mib=256, container=container)
    _, op = await svc.templates.launch(req, DEFAULT_PROJECT)
    while not op.done:
        op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
    assert op.error is None, op.error


def build(tmp_path: Path) -> tuple[Services, FakeHost]:
    return fake_services(tmp_path, ("tiny",), 64 * MIB)


def test_a_container_launches_as_an_instance_of_its_own_kind_with_a_uid_range(tmp_path):
    svc, host = build(tmp_path)
    asyncio.run(launch(svc, "c1"))
    asyncio.run(launch(svc, "c2"))
    asyncio.run(launch(svc, "v1", container=False))
    assert host.calls[: len(CONTAINER_STEPS)] == CONTAINER_STEPS
    c1, c2, v1 = (svc.instances.get(n) for n in ("c1", "c2", "v1"))
    assert (c1.kind, c2.kind, v1.kind) == ("container", "container", "vm")
    assert c1.state == c2.state == State.RUNNING
    assert c1.root_layer is None and v1.root_layer is not None  # no qcow2 layer of its own
    # Each container's root is the first of a range of uids no one else has, above every VM's.
    assert c1.uid is not None and c2.uid is not None and v1.uid is not None
    assert c1.uid >= CONTAINER_UID_BASE > v1.uid >= VM_UID_BASE
    assert c2.uid - c1.uid == CONTAINER_UID_RANGE
    # The host is told what it runs: the image's disk (its files are unpacked from it).
    spec = host.vms[c1.id].spec
    assert spec.kind == "container" and spec.disk_chain == (svc.instances.disks.image_disk(c1),)
    view = svc.instances.view(c1)
    assert view["type"] == "container"
    svc.close()


def test_a_container_stops_starts_and_is_deleted_like_a_vm(tmp_path):
    svc, host = build(tmp_path)
    asyncio.run(launch(svc, "c1"))
    inst = svc.instances.get("c1")

    async def cycle() -> None:
        for action in (svc.instances.stop, svc.instances.start, svc.instances.restart):
            op = await action("c1")
            while not op.done:
                op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
            assert op.error is None, op.error
        await svc.instances.delete("c1", force=True)

    asyncio.run(cycle())
    assert inst.id not in host.vms
    assert svc.instances.list() == []
    svc.close()


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("a memory snapshot", lambda svc: svc.snapshots.create("c1", "s1", memory=True)),
        ("adding a NIC", lambda svc: svc.nics.add("c1", "default")),
        ("a backup export", lambda svc: svc.backups.export("c1")),
    ],
    ids=["memory-snapshot", "nic-add", "export"],
)
def test_what_only_a_vm_has_is_refused_by_name(tmp_path, what, call):
    svc, host = build(tmp_path)
    asyncio.run(launch(svc, "c1"))
    before = list(host.calls)
    with pytest.raises(VMOnly) as refused:
        asyncio.run(call(svc))
    assert refused.value.code == "vm-only"
    assert what in refused.value.message and "c1 is a container" in refused.value.message
    assert host.calls == before  # refused before the host was asked anything
    svc.close()


def test_a_container_of_an_imported_image_is_refused_before_anything_is_made(tmp_path):
    svc, host = build(tmp_path)
    folder = svc.config.images_dir / "mine" / "v1"
    svc.images.store.put(
        Image("mine", "v1", "", str(folder), disk_virtual_bytes=64 * MIB, origin="imported qcow2")
    )
    with pytest.raises(InvalidInput, match="imported"):
        asyncio.run(launch(svc, "c1", image="mine"))
    assert svc.instances.list() == [] and host.vms == {}
    svc.close()


def test_a_container_launch_never_takes_a_template(tmp_path):
    """A container runs the image's files: a template (a VM's saved memory) is never cloned
    for it, even where one fits its shape."""
    svc, _ = build(tmp_path)
    found = []
    svc.templates.find = lambda req: found.append(req) or None  # type: ignore[method-assign]
    asyncio.run(launch(svc, "c1"))
    assert found == []
    asyncio.run(launch(svc, "v1", container=False))
    assert len(found) == 1
    svc.close()


def test_a_failed_container_start_leaves_it_in_error_with_the_reason(tmp_path):
    svc, host = build(tmp_path)
    host.fail_at = "start"
    with pytest.raises(AssertionError, match="injected failure"):
        asyncio.run(launch(svc, "c1"))
    inst = svc.instances.get("c1")
    assert inst.state == State.ERROR and "injected failure" in (inst.state_reason or "")
    asyncio.run(svc.instances.delete("c1"))
    assert svc.instances.list() == []
    svc.close()


async def finish(svc: Services, op: Operation) -> Operation:
    while not op.done:
        op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
    assert op.error is None, op.error
    return op


def test_a_container_snapshot_is_a_copy_of_its_layer_and_restores_it(tmp_path):
    svc, host = build(tmp_path)
    asyncio.run(launch(svc, "c1"))
    c1 = svc.instances.get("c1")

    async def work() -> None:
        taken = await finish(svc, await svc.snapshots.create("c1", "before"))
        assert taken.result["snapshot"]["consistency"] == "frozen"  # type: ignore[index]
        snap = svc.snapshots.store.get(c1.id, "before")
        assert snap is not None and snap.layer == CONTAINER_LAYER and not snap.memory
        assert snap.id in host.memory_images  # the host keeps the copy under its id
        # A running container is stopped, its layer put back, and started again.
        await finish(svc, await svc.snapshots.restore("c1", "before", restart=True))
        assert host.restored_layers == [(c1.id, snap.id)]
        assert svc.instances.get("c1").state == State.RUNNING
        await svc.snapshots.delete("c1", "before")
        assert snap.id not in host.memory_images

    asyncio.run(work())
    svc.close()


def test_a_running_container_is_resized_at_once_and_either_way(tmp_path):
    svc, host = build(tmp_path)
    asyncio.run(launch(svc, "c1"))
    c1 = svc.instances.get("c1")

    async def work() -> None:
        op = await svc.resize.resize("c1", cpus=2, memory_mib=512, disk_bytes=256 * MIB)
        assert (await finish(svc, op)).result["applied"] == {  # type: ignore[index]
            "cpus": "live",
            "memory": "live",
            "disk": "next-boot",
        }
        assert host.limits[c1.id] == (2, 512)
        # Less memory too: a container's limit is its control group's.
        await finish(svc, await svc.resize.resize("c1", memory_mib=192))
        assert host.limits[c1.id] == (2, 192)
        inst = svc.instances.get("c1")
        assert (inst.spec.cpus, inst.spec.memory_mib) == (2, 192)

    asyncio.run(work())
    svc.close()
