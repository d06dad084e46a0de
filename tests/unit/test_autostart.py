"""VMs launched with autostart start when the host has booted (issue 11, item 5), and only
then: against a FakeHost, a host reboot is a new FakeHost (no QEMU left, first start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gureum.config import load_config
from gureum.model.instance import State
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from tests.unit.fakehost import FakeHost
from tests.unit.test_creation_rollback import build, finish


async def started(svc: Services) -> dict[str, list[str]]:
    report = await svc.start()
    for op in svc.ops.list(limit=100):
        await finish(svc, op)
    await svc.reconciler.stop()
    return report


def test_autostart_vms_start_after_a_host_reboot_and_only_then(tmp_path: Path) -> None:
    svc, host = build(tmp_path)

    async def first() -> None:
        await started(svc)  # the host's first boot: nothing to start yet
        for name, auto in (("db", True), ("scratch", False), ("parked", True)):
            _, op = await svc.instances.launch(LaunchRequest(name, "tiny", autostart=auto))
            await finish(svc, op)
        await finish(svc, await svc.instances.stop("parked"))  # stopped on purpose

    asyncio.run(first())
    assert svc.instances.view(svc.instances.get("db"))["autostart"] is True
    svc.close()

    # The host reboots: its QEMUs are gone, its disks stay; the service starts for the first
    # time since.
    config = load_config(tmp_path / "home", env={"GUREUM_RATE_LIMIT": "0"})
    rebooted = FakeHost(config, files=set(host.files), boot_files=set(host.boot_files))
    svc = Services.build(config, host=rebooted)
    report = asyncio.run(started(svc))
    assert sorted(report["autostarted"]) == ["db", "parked"]
    states = {i.name: i.state for i in svc.instances.list()}
    assert states == {"db": State.RUNNING, "scratch": State.CRASHED, "parked": State.RUNNING}

    # The service restarts (not the host): a VM stopped since stays stopped.
    asyncio.run(_stop(svc, "db"))
    svc.close()
    host2 = svc.host
    svc = Services.build(config, host=host2)
    report = asyncio.run(started(svc))
    assert report["autostarted"] == []
    assert svc.instances.get("db").state == State.STOPPED
    svc.close()


async def _stop(svc: Services, name: str) -> None:
    await finish(svc, await svc.instances.stop(name))


def test_the_host_says_first_start_once_per_boot_and_home(tmp_path: Path, monkeypatch) -> None:
    from gureum.host import agent

    monkeypatch.setattr(agent, "BOOT_MARKERS", tmp_path / "run")  # /run: emptied by a boot
    one = agent.LocalHostAgent(load_config(tmp_path / "one", env={}))
    two = agent.LocalHostAgent(load_config(tmp_path / "two", env={}))
    assert one.first_start_since_boot() is True
    assert one.first_start_since_boot() is False  # a restart of the service, same boot
    assert two.first_start_since_boot() is True  # another home is another service
