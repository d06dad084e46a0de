"""One creation path, undone at every step: launch, clone and backup import each run against a
``FakeHost`` with a failure injected at each host step in turn, and afterwards nothing is left
in the store or on the host that was not there before (an instance whose boot failed stays in
``error``, with its reason, until it is deleted: then it too is gone).

The step lists are what a clean run calls, checked first: a change to a creation flow that
adds a step fails here until the step is listed, and so gets its rollback tested.
"""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gureum.errors import GureumError, QuotaExceeded
from gureum.host.agent import LocalHostAgent
from gureum.host.interface import HostAgent
from gureum.model.hardware import Hardware
from gureum.model.instance import DEFAULT_PROJECT, Instance, InstanceSpec, State
from gureum.model.operation import Operation
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from gureum.service.operations import Quiet
from gureum.storage import archive
from gureum.store import schema
from gureum.units import MIB
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_services

TABLES = ("instances", "nics", "instance_secgroups", "layers", "snapshots", "forwards")
DISK = 64 * MIB

# What a clean run asks of the host, in order (a step called twice is failed at each call).
LAUNCH_STEPS = ["ensure_network", "sync_network", "create_disk", "sync_network",
                "claim_waiting", "start", "wait_ready"]  # fmt: skip
CLONE_STEPS = ["create_disk", "sync_network", "claim_waiting", "start", "wait_ready",
               "refresh_identity"]  # fmt: skip
IMPORT_STEPS = ["read_archive", "check_image", "check_image", "take_boot_files", "take_disk",
                "create_disk", "take_memory"]  # fmt: skip


def build(tmp_path: Path) -> tuple[Services, FakeHost]:
    return fake_services(tmp_path, ("tiny",), DISK)


def rows(svc: Services) -> dict[str, int]:
    with svc.db.read() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(getattr(schema, name))).scalar()
            for name in TABLES
        }


async def finish(svc: Services, op: Operation) -> Operation:
    while not op.done:
        op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
    return op


def nothing_held(svc: Services) -> None:
    assert not +svc.quotas.held.of(DEFAULT_PROJECT), "a quota hold was not released"
    assert not +svc.instances.admission.growing.of("host"), "a capacity hold was not released"


async def undo_failed(svc: Services, name: str) -> None:
    """An instance whose boot failed stays in error with its reason; then it is deleted."""
    left = [i for i in svc.instances.list() if i.name == name]
    for inst in left:
        assert inst.state == State.ERROR, inst.state
        assert "injected failure" in (inst.state_reason or "")
        await svc.instances.delete(inst.id)


async def fails_and_is_undone(
    svc: Services, name: str, attempt: Callable[[], Awaitable[Operation]]
) -> None:
    """The injected failure is what the caller sees (at once, or as the operation's error);
    nothing stays held; an instance left in error is deleted."""
    try:
        op = await attempt()
    except GureumError as exc:
        assert "injected failure" in exc.message
    else:
        assert op.status.value == "failed" and "injected failure" in str(op.error)
    nothing_held(svc)
    await undo_failed(svc, name)


def cases(steps: list[str]) -> list[tuple[str, int]]:
    return [(step, steps[: i + 1].count(step)) for i, step in enumerate(steps)]


# -- launch --------------------------------------------------------------------------------------
async def launch(svc: Services, name: str = "web") -> Operation:
    _, op = await svc.instances.launch(LaunchRequest(name, "tiny", memory_mib=256))
    return await finish(svc, op)


def test_a_clean_launch_takes_the_listed_steps(tmp_path):
    svc, host = build(tmp_path)
    op = asyncio.run(launch(svc))
    assert op.status.value == "succeeded", op.error
    assert host.calls == LAUNCH_STEPS
    assert svc.instances.get("web").state == State.RUNNING
    svc.close()


@pytest.mark.parametrize(("step", "nth"), cases(LAUNCH_STEPS))
def test_a_launch_that_fails_at_any_step_leaves_nothing(tmp_path, step, nth):
    svc, host = build(tmp_path)
    before_rows, before_host = rows(svc), host.state()
    host.fail_at, host.fail_on = step, nth

    asyncio.run(fails_and_is_undone(svc, "web", lambda: launch(svc)))
    assert rows(svc) == before_rows
    assert host.state().without(before_host) == {}
    svc.close()


def test_a_launch_that_another_control_plane_filled_the_quota_of_meanwhile_leaves_nothing(
    tmp_path,
):
    """The quota checked at admission, then, while its network is made, another control plane
    writes the project's last allowed instance: the store's recheck refuses this one, and
    nothing of it is left (issue 17: quotas hold across control planes)."""
    svc, host = build(tmp_path)
    project = svc.tenancy.create_project("team", {"max_instances": 1})
    made_network = host.ensure_network

    async def ensure_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not svc.instances.store.allocated(project.id)["instances"]:
            taken = Instance(id="i-0000000000aa", spec=InstanceSpec("theirs", "tiny", 1, 256,
                             DISK), state=State.STOPPED, created_at=0.0, image_version="v1",
                             project_id=project.id)  # fmt: skip
            svc.instances.store.insert(taken)
        return await made_network(*args, **kwargs)

    host.ensure_network = ensure_network  # type: ignore[method-assign]
    before_host = host.state()

    async def run() -> None:
        with pytest.raises(QuotaExceeded, match="1 of 1 instances in use"):
            await svc.instances.launch(LaunchRequest("web", "tiny", memory_mib=256), project.id)

    asyncio.run(run())
    assert [i.name for i in svc.instances.list()] == ["theirs"]
    assert host.state().without(before_host) == {}
    assert not +svc.quotas.held.of(project.id)
    svc.close()


# -- clone ---------------------------------------------------------------------------------------
async def with_snapshot(svc: Services, memory: bool) -> None:
    assert (await launch(svc, "src")).status.value == "succeeded"
    await svc.snapshots.create_now(svc.instances.get("src").id, "snap", memory, Quiet())


async def clone(svc: Services) -> Operation:
    _, op = await svc.snapshots.clone("src", "snap", "copy")
    return await finish(svc, op)


@pytest.mark.parametrize("memory", [True, False], ids=["memory", "disk"])
def test_a_clean_clone_takes_the_listed_steps(tmp_path, memory):
    svc, host = build(tmp_path)
    asyncio.run(with_snapshot(svc, memory))
    host.calls.clear()
    op = asyncio.run(clone(svc))
    assert op.status.value == "succeeded", op.error
    assert host.calls == CLONE_STEPS
    copy = svc.instances.get("copy")
    assert host.vms[copy.id].restored_from == (svc.snapshots.get("src", "snap")[1].id
                                               if memory else None)  # fmt: skip
    svc.close()


@pytest.mark.parametrize(("step", "nth"), cases(CLONE_STEPS))
@pytest.mark.parametrize("memory", [True, False], ids=["memory", "disk"])
def test_a_clone_that_fails_at_any_step_leaves_nothing(tmp_path, step, nth, memory):
    svc, host = build(tmp_path)
    asyncio.run(with_snapshot(svc, memory))
    before_rows, before_host = rows(svc), host.state()
    host.calls.clear()
    host.fail_at, host.fail_on = step, nth

    asyncio.run(fails_and_is_undone(svc, "copy", lambda: clone(svc)))
    assert rows(svc) == before_rows
    assert host.state().without(before_host) == {}
    assert svc.instances.get("src").state == State.RUNNING  # the source is untouched
    svc.close()


def test_a_clone_of_an_imported_machine_that_fails_leaves_no_boot_files(tmp_path):
    svc, host = build(tmp_path)

    async def run() -> None:
        await svc.backups.import_(body(backup(tmp_path, memory=False)), "imp", DEFAULT_PROJECT)
        imp = svc.instances.get("imp")
        await svc.snapshots.create_now(imp.id, "snap", False, Quiet())
        before_rows, before_host = rows(svc), host.state()
        host.calls.clear()
        host.fail_at = "create_disk"
        _, op = await svc.snapshots.clone("imp", "snap", "copy")
        assert (await finish(svc, op)).status.value == "failed"
        copy = svc.instances.get("copy")
        assert copy.id in host.boot_files  # linked from its source
        await undo_failed(svc, "copy")
        assert rows(svc) == before_rows
        assert host.state().without(before_host) == {}

    asyncio.run(run())
    svc.close()


# -- backup import -------------------------------------------------------------------------------
def backup(tmp_path: Path, memory: bool = True) -> bytes:
    hw = Hardware.for_boot(1, 256)
    files = {name: tmp_path / name.replace("/", "-") for name in ("disk.qcow2", "vmlinuz",
                                                                   "initrd.img")}  # fmt: skip
    if memory:
        files |= {"memory/state": tmp_path / "state"}
        files |= {f"memory/ram-{b}.qcow2": tmp_path / f"ram-{b}" for b, _ in hw.memory_backends()}
    for path in files.values():
        path.write_bytes(b"data")
    cfg = {"name": "src", "image": "tiny", "image_version": "v1", "cpus": 1, "memory_mib": 256,
           "disk_bytes": DISK, "memory": memory, "consistency": "paused",
           "hardware": hw.to_json()}  # fmt: skip
    out = io.BytesIO()
    archive.write(out, files, cfg)
    return out.getvalue()


async def body(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


def test_a_clean_import_takes_the_listed_steps(tmp_path):
    svc, host = build(tmp_path)
    asyncio.run(svc.networks.default())
    host.calls.clear()
    inst = asyncio.run(svc.backups.import_(body(backup(tmp_path)), "copy", DEFAULT_PROJECT))
    assert [c for c in host.calls if c != "sync_network"] == IMPORT_STEPS
    assert inst.state == State.STOPPED
    assert [s.name for s in svc.snapshots.list("copy")] == ["backup"]
    svc.close()


@pytest.mark.parametrize(("step", "nth"), cases(IMPORT_STEPS))
def test_an_import_that_fails_at_any_step_leaves_nothing(tmp_path, step, nth):
    svc, host = build(tmp_path)
    asyncio.run(svc.networks.default())
    before_rows, before_host = rows(svc), host.state()
    host.fail_at, host.fail_on = step, nth

    async def run() -> None:
        with pytest.raises(GureumError, match="injected failure"):
            await svc.backups.import_(body(backup(tmp_path)), "copy", DEFAULT_PROJECT)
        nothing_held(svc)

    asyncio.run(run())
    assert rows(svc) == before_rows
    assert host.state().without(before_host) == {}
    assert not list((svc.config.home / "scratch").iterdir())
    svc.close()


def test_an_import_whose_store_write_fails_leaves_nothing(tmp_path, monkeypatch):
    """The one transaction: a failure while writing the rows leaves none of them."""
    svc, host = build(tmp_path)
    asyncio.run(svc.networks.default())
    before_rows, before_host = rows(svc), host.state()

    def refuse(*args: object, **kwargs: object) -> None:
        raise GureumError("the store refused")

    monkeypatch.setattr(svc.instances.store, "create", refuse)
    with pytest.raises(GureumError, match="the store refused"):
        asyncio.run(svc.backups.import_(body(backup(tmp_path)), "copy", DEFAULT_PROJECT))
    nothing_held(svc)
    assert rows(svc) == before_rows
    assert host.state().without(before_host) == {}
    svc.close()


def test_the_store_writes_an_instance_and_its_nics_in_one_transaction(tmp_path):
    """A NIC that cannot be written (its address taken meanwhile) leaves no instance row."""
    svc, _host = build(tmp_path)
    asyncio.run(launch(svc, "first"))
    taken = svc.networks.store.nics()[0]
    before = rows(svc)
    real_plan = svc.networks.plan_nics

    def same_address(instance_id: str, wanted: list, macs: dict | None = None) -> list:
        nics = real_plan(instance_id, wanted, macs)
        return [type(n)(**{**n.__dict__, "ip": taken.ip}) for n in nics]

    svc.networks.plan_nics = same_address  # type: ignore[method-assign]  # a race, staged
    with pytest.raises(GureumError, match="taken meanwhile"):
        asyncio.run(launch(svc, "second"))
    assert rows(svc) == before
    nothing_held(svc)
    svc.close()


# -- the interface -------------------------------------------------------------------------------
def protocol_methods() -> list[str]:
    return [
        name
        for name, value in vars(HostAgent).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    ]


@pytest.mark.parametrize("implementation", [LocalHostAgent, FakeHost])
def test_every_host_agent_has_every_method_of_the_interface(implementation):
    """The service calls nothing a host agent lacks: each method of ``HostAgent`` exists on
    both implementations with the same parameters."""
    for name in protocol_methods():
        if name == "accel":
            continue  # an attribute of LocalHostAgent, a property of FakeHost
        assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
        want = list(inspect.signature(getattr(HostAgent, name)).parameters)
        have = list(inspect.signature(getattr(implementation, name)).parameters)
        assert have == want, f"{implementation.__name__}.{name}{have} != {want}"
