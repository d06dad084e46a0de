"""What a user sees of a resize that waits for the next boot, and what a restore does to a
VM's size (issue 11, items 1-3), against a FakeHost: no VM boots here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gureum.errors import InvalidState
from gureum.model.instance import State
from gureum.service.instances import LaunchRequest
from gureum.service.operations import Quiet
from tests.unit.test_creation_rollback import DISK, build, finish, launch


async def resize(svc, name: str, **sizes: int) -> None:
    op = await finish(svc, await svc.resize.resize(name, **sizes))
    assert op.status.value == "succeeded", op.error


def top_size(svc, host, name: str) -> int:
    inst = svc.instances.get(name)
    return host.sizes[svc.instances.disks.layer_path(inst.root_layer)]


def test_a_running_vm_shows_what_it_runs_and_what_its_next_boot_gets(tmp_path: Path) -> None:
    svc, _host = build(tmp_path)

    async def run() -> None:
        _, op = await svc.instances.launch(LaunchRequest("web", "tiny", cpus=2, memory_mib=512))
        await finish(svc, op)
        await resize(svc, "web", cpus=1, memory_mib=256)  # a decrease: at the next boot

    asyncio.run(run())
    shown = svc.instances.view(svc.instances.get("web"))
    assert (shown["cpus"], shown["memory_mib"]) == (2, 512)  # what the guest has now
    assert shown["pending_next_boot"] == {"cpus": 1, "memory_mib": 256}
    # Until it reboots, the host counts what it runs (the larger).
    assert svc.instances.host_summary()["committed"] == {"cpus": 2, "memory_mib": 512}
    svc.close()


def test_restoring_a_disk_snapshot_keeps_the_disk_size(tmp_path: Path) -> None:
    svc, host = build(tmp_path)

    async def run() -> None:
        await launch(svc)
        await finish(svc, await svc.instances.stop("web"))
        await svc.snapshots.create_now(svc.instances.get("web").id, "small", False, Quiet())
        await resize(svc, "web", disk_bytes=2 * DISK)
        await finish(svc, await svc.snapshots.restore("web", "small"))

    asyncio.run(run())
    inst = svc.instances.get("web")
    assert inst.spec.disk_bytes == 2 * DISK  # not the snapshot's DISK: never shrunk
    assert top_size(svc, host, "web") == 2 * DISK
    svc.close()


def test_a_running_vm_is_restored_to_a_disk_snapshot_only_when_told_to_restart(tmp_path):
    svc, _host = build(tmp_path)

    async def run() -> None:
        await launch(svc)
        await svc.snapshots.create_now(svc.instances.get("web").id, "s", False, Quiet())
        with pytest.raises(InvalidState, match="--restart"):
            await svc.snapshots.restore("web", "s")
        assert svc.instances.get("web").state == State.RUNNING  # untouched
        op = await finish(svc, await svc.snapshots.restore("web", "s", restart=True))
        assert op.status.value == "succeeded", op.error

    asyncio.run(run())
    assert svc.instances.get("web").state == State.RUNNING
    svc.close()


def test_a_memory_restore_grows_the_disk_back_to_its_size_live(tmp_path: Path) -> None:
    svc, host = build(tmp_path)

    async def run() -> None:
        await launch(svc)
        await svc.snapshots.create_now(svc.instances.get("web").id, "m", True, Quiet())
        await resize(svc, "web", disk_bytes=2 * DISK)
        host.calls.clear()
        op = await finish(svc, await svc.snapshots.restore("web", "m"))
        assert op.status.value == "succeeded", op.error

    asyncio.run(run())
    inst = svc.instances.get("web")
    assert inst.spec.disk_bytes == 2 * DISK
    # Resumed on the snapshot's size (its guest knew that one), then grown live.
    assert top_size(svc, host, "web") == DISK
    assert host.calls.index("resize_disk_live") > host.calls.index("start")
    assert "grow_guest_filesystem" in host.calls
    assert svc.instances.view(inst)["disk_bytes"] == 2 * DISK
    svc.close()
