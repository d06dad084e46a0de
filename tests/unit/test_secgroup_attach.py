"""A running VM's security groups change live (issue 11, item 10), against a FakeHost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gureum.errors import Conflict, NotFound
from tests.unit.test_creation_rollback import build, launch


def test_attach_and_detach_change_a_running_vms_groups_at_once(tmp_path: Path) -> None:
    svc, host = build(tmp_path)

    async def run() -> None:
        await launch(svc)
        svc.secgroups.create("web")
        web = svc.instances.get("web")
        host.calls.clear()
        assert await svc.secgroups.attach(web, "web") == ["default", "web"]
        assert "sync_network" in host.calls  # the firewall was re-rendered now, not at boot
        with pytest.raises(Conflict, match="already in"):
            await svc.secgroups.attach(web, "web")
        assert await svc.secgroups.detach(web, "default") == ["web"]
        with pytest.raises(Conflict, match="only security group"):
            await svc.secgroups.detach(web, "web")
        with pytest.raises(NotFound, match="not in security group default"):
            await svc.secgroups.detach(web, "default")

    asyncio.run(run())
    assert svc.instances.view(svc.instances.get("web"))["secgroups"] == ["web"]
    svc.close()


def test_another_projects_group_is_not_found(tmp_path: Path) -> None:
    svc, _host = build(tmp_path)
    other = svc.tenancy.create_project("other", {})
    svc.secgroups.create("theirs", other.id)

    async def run() -> None:
        await launch(svc)
        with pytest.raises(NotFound):
            await svc.secgroups.attach(svc.instances.get("web"), "theirs")

    asyncio.run(run())
    svc.close()
