"""What a review of issue 10's refactor found changed from the code before it ("behaviour
stays as it is"), each now held by a test: a refused creation makes nothing, a failed cleanup
step leaves nothing else behind, groups are never named after they are gone, and a plain
restore says what it did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gureum.errors import InsufficientCapacity, QuotaExceeded
from gureum.model.instance import DEFAULT_PROJECT, State
from gureum.service.instances import LaunchRequest
from gureum.service.networks import DEFAULT_GROUP
from gureum.service.operations import Quiet
from tests.unit.test_creation_rollback import backup, body, build, finish, launch, rows


# -- 1. a refused creation now makes the project's default network and security group ---------
# Old launch (service/instances.py@c1f91c1): quota check and admit came first, under the
# admission lock; ``networks.default`` and ``secgroups.resolve`` only after them. Old import:
# ``networks.default`` in ``_create_held``, after the quota was checked and held. Now both are
# resolved before ``Creator.claim``: a refused request leaves a network (a namespace, DHCP,
# firewall on the host; a row that counts against max_networks and blocks project deletion).
def test_a_launch_refused_by_quota_makes_no_network_or_group(tmp_path: Path) -> None:
    svc, host = build(tmp_path)
    project = svc.tenancy.create_project("p1", {"max_instances": 0})
    with pytest.raises(QuotaExceeded):
        asyncio.run(svc.instances.launch(LaunchRequest("web", "tiny"), project.id))
    assert svc.networks.list(project.id) == []
    assert svc.secgroups.list(project.id) == []
    assert host.networks == set()
    svc.close()


def test_a_launch_refused_by_capacity_makes_no_network(tmp_path: Path) -> None:
    svc, host = build(tmp_path)
    with pytest.raises(InsufficientCapacity):
        asyncio.run(svc.instances.launch(LaunchRequest("web", "tiny", memory_mib=1 << 20)))
    assert svc.networks.list(DEFAULT_PROJECT) == []
    assert host.networks == set()
    svc.close()


def test_an_import_refused_by_quota_makes_no_network(tmp_path: Path) -> None:
    svc, host = build(tmp_path)
    project = svc.tenancy.create_project("p1", {"max_instances": 0})
    with pytest.raises(QuotaExceeded):
        asyncio.run(svc.backups.import_(body(backup(tmp_path)), "copy", project.id))
    assert svc.networks.list(project.id) == []
    assert host.networks == set()
    svc.close()


# -- 2. a delete whose network sync fails still removes everything -----------------------------
# ``Creator.forget`` writes every row away in one transaction, then cleans up after them on the
# host: a step that fails there (a network's sync) is logged and the others still run, so no
# layer, memory image or disk file is left behind an instance that no longer exists.
def test_a_delete_whose_network_sync_fails_leaves_nothing(tmp_path: Path, caplog) -> None:
    svc, host = build(tmp_path)

    async def run() -> None:
        assert (await launch(svc)).status.value == "succeeded"
        web = svc.instances.get("web")
        await svc.snapshots.create_now(web.id, "mem", True, Quiet())
        host.fail_at = "sync_network"
        host.fail_on = host.calls.count("sync_network") + 1
        await svc.instances.delete(web.id, force=True)

    asyncio.run(run())
    assert svc.instances.list() == []
    left = rows(svc)
    assert left["layers"] == 0, left
    assert host.memory_images == set()
    assert not [p for p in host.files if "disks" in p.parts]
    assert "network default: injected failure" in caplog.text
    svc.close()


# -- 3. a plain restore now says the guest's hostname and MAC were changed ----------------------
# Old: ``identity`` was a dict, {} for a restore that renames nothing, and the progress line
# read "(random seed, machine id)". Now it is an ``Identity()`` dataclass, always truthy, so
# ``", hostname, MAC)" if identity else ")"`` (service/lifecycle.py) picks the first.
def test_a_plain_restore_does_not_say_hostname_and_mac_changed(tmp_path: Path) -> None:
    svc, _host = build(tmp_path)

    async def run() -> list[str]:
        assert (await launch(svc)).status.value == "succeeded"
        await svc.snapshots.create_now(svc.instances.get("web").id, "disk", False, Quiet())
        op = await finish(svc, await svc.snapshots.restore("web", "disk", restart=True))
        assert op.status.value == "succeeded", op.error
        assert svc.instances.get("web").state == State.RUNNING
        return [p.message for p in op.progress]

    progress = asyncio.run(run())
    refreshed = [p for p in progress if "guest identity refreshed" in p]
    assert refreshed, progress
    assert "hostname" not in refreshed[0], refreshed
    svc.close()


# -- 4. security groups resolved long before the row is written --------------------------------
# Old import resolved the default group right before writing the memberships (no await
# between: ``SecGroupService.delete``, which has no await either, could not slip in). Now the
# groups are resolved before ``Creator.claim`` and the host work of ``before`` (taking the disk
# can take minutes): a group deleted meanwhile (it is in use by nothing yet) is written as a
# membership that names no group. The instance then shows no group and its ports are given a
# group without rules. Launch and clone have the same window, narrower (the claim's lock).
def test_an_import_is_never_a_member_of_a_deleted_group(tmp_path: Path) -> None:
    svc, host = build(tmp_path)

    async def run() -> str:
        await svc.networks.default()
        svc.secgroups.default()
        real_take_disk = host.take_disk

        async def take_disk(src: Path, dest: Path, size_bytes: int, what: str) -> None:
            await svc.secgroups.delete(DEFAULT_GROUP, DEFAULT_PROJECT)  # a concurrent request
            await real_take_disk(src, dest, size_bytes, what)

        host.take_disk = take_disk  # type: ignore[method-assign]
        inst = await svc.backups.import_(body(backup(tmp_path)), "copy", DEFAULT_PROJECT)
        return inst.id

    instance_id = asyncio.run(run())
    groups = {g.id for g in svc.secgroups.list()}
    member_of = svc.networks.store.instance_groups().get(instance_id, [])
    assert member_of and set(member_of) <= groups, (member_of, groups)
    svc.close()
