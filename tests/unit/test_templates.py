"""Image templates (issue 13, part 1) over a FakeHost: a template is the image booted once and
saved running; a launch of its shape clones it (its memory, its disk layer under the clone's
own, a new identity); anything else, or --cold, boots. Deleting the image takes its templates,
but never under a clone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.service import templates
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_api, finish, launch

World = tuple[TestClient, Services, FakeHost]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(templates, "SETTLE_S", 0.0)
    with fake_api(tmp_path, ("tiny",)) as made:
        yield made


def make_template(root: TestClient, svc: Services, **shape: int) -> dict:
    resp = root.post("/v1/images/tiny/template", json=shape)
    assert resp.status_code == 202, resp.text
    op = finish(root, svc, resp.json()["id"])
    assert op.error is None, op.error
    assert op.result is not None
    return op.result["template"]  # type: ignore[no-any-return]


def test_a_launch_of_the_templates_shape_is_a_clone_of_its_saved_machine(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    saved = svc.snapshots.store.by_id(tpl["snapshot_id"])
    assert saved is not None and saved.memory
    template_vm = svc.instances.store.get(tpl["instance_id"])
    assert template_vm is not None and template_vm.state.value == "stopped"
    assert template_vm.project_id == templates.TEMPLATES_PROJECT

    inst = launch(root, svc, "web", "tiny")
    assert inst["template_id"] == tpl["id"]
    assert inst["type"] == "vm"
    vm = host.vms[inst["id"]]
    assert vm.restored_from == tpl["snapshot_id"]  # its memory, not a boot
    made = svc.instances.get(inst["id"])
    assert made.hardware is not None
    assert made.hardware.generation_id != saved.hardware.generation_id
    assert made.hardware.mac != saved.hardware.mac
    below = svc.instances.disks.store.get(made.root_layer or "")
    assert below is not None and below.backing == saved.layer  # its own layer on the template's
    assert "refresh_identity" in host.calls
    shown = root.get("/v1/images/tiny").json()["templates"]
    assert [(t["id"], t["clones"]) for t in shown] == [(tpl["id"], 1)]
    # The templates project's machine is nobody's to see but the administrator's.
    assert [i["name"] for i in root.get("/v1/instances").json()] == ["web"]


def test_a_clone_is_told_its_login_so_that_ssh_need_not_wait_for_cloud_init(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest installs these keys for the image's default user before cloud-init runs again
    (``NEW_IDENTITY``); a clone launched without keys, or of an image whose user is root (whom
    cloud-init only refuses), is told none. Every clone must reseed its random generator."""
    root, svc, host = world
    make_template(root, svc)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5U/wqN7jpyEI0PoZMdrAuPnutMEuuZNh6mC4KVP8Na"
    monkeypatch.setattr(svc.images, "default_user", lambda image: "debian")
    inst = launch(root, svc, "web", "tiny", ssh_keys=[key])
    told = host.told[inst["id"]]
    assert told.login == ("debian", (key,))
    assert told.hostname == "web" and told.shared
    assert "login" not in told.to_dict()  # not put in the operation's result
    bare = launch(root, svc, "bare", "tiny")
    assert host.told[bare["id"]].login is None
    monkeypatch.setattr(svc.images, "default_user", lambda image: "root")
    as_root = launch(root, svc, "rooted", "tiny", ssh_keys=[key])
    assert host.told[as_root["id"]].login is None


@pytest.mark.parametrize(
    "body",
    [
        {"cold": True},
        {"cpus": 2},
        {"memory_mib": 512},
        {"disk_gib": 1.0},
        {"networks": ["none"]},
    ],
)
def test_a_launch_the_template_does_not_fit_boots(world: World, body: dict) -> None:
    root, svc, host = world
    make_template(root, svc)
    inst = launch(root, svc, "web", "tiny", **body)
    assert inst["template_id"] is None
    assert host.vms[inst["id"]].restored_from is None


def test_the_guest_is_sealed_before_it_is_saved_and_no_shape_twice(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    # Its first-boot work done and forgotten (cloud-init), before the memory snapshot.
    assert host.calls.index("seal_template") < host.calls.index("save_memory")
    again = root.post("/v1/images/tiny/template", json={})
    assert again.status_code == 409, again.text
    assert root.post("/v1/images/tiny/template", json={"nics": 9}).status_code == 400


def test_deleting_the_image_takes_its_templates_but_never_under_a_clone(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    launch(root, svc, "web", "tiny")
    refused = root.delete("/v1/images/tiny")
    assert refused.status_code == 409 and "1 instance" in refused.text
    assert svc.templates.store.list("tiny") != []
    assert root.delete("/v1/instances/web", params={"force": "true"}).status_code == 200
    assert root.delete("/v1/images/tiny").status_code == 200
    assert svc.templates.store.list() == []
    assert svc.instances.store.get(tpl["instance_id"]) is None
    assert svc.snapshots.store.by_id(tpl["snapshot_id"]) is None
    assert svc.images.list() == [] and host.vms == {}


def test_a_template_whose_boot_fails_leaves_nothing(world: World) -> None:
    root, svc, host = world
    host.fail_at = "save_memory"
    resp = root.post("/v1/images/tiny/template", json={})
    op = finish(root, svc, resp.json()["id"])
    assert op.error is not None
    assert svc.templates.store.list() == []
    assert svc.instances.store.list(templates.TEMPLATES_PROJECT) == []
    assert host.vms == {}


def test_removing_templates_keeps_those_under_a_clone_and_frees_the_templates_network(
    world: World,
) -> None:
    root, svc, _ = world
    used = make_template(root, svc)
    launch(root, svc, "web", "tiny")
    unused = make_template(root, svc, cpus=2)
    gone = root.delete("/v1/images/tiny/templates")
    assert gone.status_code == 200, gone.text
    assert gone.json()["removed"] == [unused["id"]]
    assert [t.id for t in svc.templates.store.list()] == [used["id"]]
    assert svc.networks.list(templates.TEMPLATES_PROJECT) != []  # the kept one's machine's
    root.delete("/v1/instances/web", params={"force": "true"})
    assert root.delete("/v1/images/tiny/templates").json()["removed"] == [used["id"]]
    assert svc.networks.list(templates.TEMPLATES_PROJECT) == []
    assert root.get("/v1/images/tiny").status_code == 200  # the image itself stays


def test_a_template_is_not_one_of_the_passing_snapshots_a_restart_drops(world: World) -> None:
    root, svc, _ = world
    tpl = make_template(root, svc)
    root.portal.call(svc.instances.drop_internal_snapshots)  # type: ignore[union-attr]
    assert svc.snapshots.store.by_id(tpl["snapshot_id"]) is not None


def test_a_template_that_lost_its_machine_lets_launches_boot_and_goes_cleanly(
    world: World,
) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    machine = svc.instances.store.get(tpl["instance_id"])
    assert machine is not None
    root.portal.call(lambda: svc.instances.delete(machine.id, force=True))  # type: ignore[union-attr]
    inst = launch(root, svc, "web", "tiny")
    assert inst["template_id"] is None and host.vms[inst["id"]].restored_from is None
    assert root.delete("/v1/images/tiny/templates").json()["removed"] == [tpl["id"]]


def test_users_see_a_templates_shape_not_its_clones_or_machine(world: World) -> None:
    root, svc, _ = world
    make_template(root, svc)
    svc.tenancy.create_user("mark")
    token = svc.tenancy.create_token(SUPERUSER, "mark", "t")[1]
    shown = root.get("/v1/images/tiny", headers={"Authorization": f"Bearer {token}"})
    assert shown.status_code == 200, shown.text
    (tpl,) = shown.json()["templates"]
    assert tpl["cpus"] == 1 and not {"clones", "instance_id", "snapshot_id"} & set(tpl)


def test_a_template_machine_no_template_names_is_deleted_at_start(world: World) -> None:
    root, svc, _ = world
    tpl = make_template(root, svc)
    svc.templates.store.remove(tpl["id"])  # as if `image template` was cut short by a restart
    dropped = root.portal.call(svc.templates.drop_orphans)  # type: ignore[union-attr]
    assert len(dropped) == 1
    assert svc.instances.store.list(templates.TEMPLATES_PROJECT) == []


def test_with_auto_templates_a_first_launch_makes_its_shapes_template(world: World) -> None:
    root, svc, _ = world
    assert launch(root, svc, "first", "tiny")["template_id"] is None  # nothing to clone yet
    assert svc.templates.store.list() == []  # auto_templates is off by default
    svc.templates.auto = True
    assert launch(root, svc, "second", "tiny")["template_id"] is None  # this one boots...
    made = [o for o in svc.ops.list(limit=100, unowned=True) if o.kind == "image-template"]
    assert len(made) == 1  # ...and makes the template of its shape, in the background
    finish(root, svc, made[0].id)
    (tpl,) = svc.templates.store.list()
    assert (tpl.shape.cpus, tpl.shape.memory_mib, tpl.shape.nics) == (1, 256, 1)
    assert launch(root, svc, "third", "tiny")["template_id"] == tpl.id
    # Another shape or disk size boots and makes one once; --cold makes none.
    launch(root, svc, "cold", "tiny", cold=True, cpus=2)
    launch(root, svc, "disk", "tiny", disk_gib=1.0, cpus=2)
    assert (
        len([o for o in svc.ops.list(limit=100, unowned=True) if o.kind == "image-template"]) == 1
    )


def test_a_template_is_never_removed_under_a_clone_being_made(world: World) -> None:
    root, svc, _ = world
    tpl = make_template(root, svc)

    async def race() -> tuple[list[str], dict, bool]:  # type: ignore[type-arg]
        gate = asyncio.Event()
        real = svc.instances.launch

        async def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            await gate.wait()  # found the template, its instance not made yet
            return await real(*args, **kwargs)

        svc.instances.launch = slow  # type: ignore[method-assign]
        req = templates.LaunchRequest(name="web", image="tiny")
        launching = asyncio.create_task(svc.templates.launch(req, "p-default"))
        await asyncio.sleep(0.01)
        removing = asyncio.create_task(svc.templates.remove("tiny"))
        await asyncio.sleep(0.05)
        waited = not removing.done()  # it waits for the launch on its way
        # Meanwhile another launch of that shape boots instead of finding the template.
        booted = svc.templates.find(req) is None
        gate.set()
        inst, op = await launching
        removed = await removing
        svc.instances.launch = real  # type: ignore[method-assign]
        await svc.ops.wait(op.id, timeout=5)
        return removed, {"template_id": inst.template_id}, waited and booted

    removed, inst, waited = root.portal.call(race)  # type: ignore[union-attr]
    assert waited
    assert removed == [] and inst["template_id"] == tpl["id"]
    assert [t.id for t in svc.templates.store.list()] == [tpl["id"]]  # kept: it has a clone


def test_auto_templates_are_bounded_per_image_whatever_shapes_are_launched(world: World) -> None:
    root, svc, _ = world
    svc.templates.auto = True
    for memory in (256, 300, 400, 500):
        launch(root, svc, f"m{memory}", "tiny", memory_mib=memory)
    made = [o for o in svc.ops.list(limit=100, unowned=True) if o.kind == "image-template"]
    assert len(made) == templates.AUTO_TEMPLATES_PER_IMAGE == 2
