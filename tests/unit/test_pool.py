"""The pool of waiting QEMUs (issue 13, part 3) over a FakeHost: QEMUs started ahead for a
template, each with its own id, user, disk layer and vmgenid; a launch takes one and becomes the
VM that QEMU was made for; the pool refills, shrinks, drops what no launch can use, counts each
against host memory and ends every one of them when the service stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.model.image import Image
from gureum.service import pool, templates
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_api, finish, launch
from tests.unit.test_templates import make_template

World = tuple[TestClient, Services, FakeHost]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(templates, "SETTLE_S", 0.0)
    with fake_api(tmp_path, ("tiny",)) as made:
        root, svc, _ = made

        async def start() -> None:  # as the service's start does, on the app's loop
            svc.templates.pool.start()

        root.portal.call(start)  # type: ignore[union-attr]
        yield made
        root.portal.call(svc.templates.pool.close)  # type: ignore[union-attr]


def filled(root: TestClient, svc: Services, size: int) -> dict:
    resp = root.put("/v1/host/pool", json={"size": size})
    assert resp.status_code == 200, resp.text
    root.portal.call(svc.templates.pool.filled, 5)  # type: ignore[union-attr]
    return root.get("/v1/host/pool").json()  # type: ignore[no-any-return]


def test_a_launch_takes_a_waiting_qemu_and_the_pool_refills(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    assert filled(root, svc, 2)["waiting"] == 2
    first, second = list(host.waiting.values())
    assert first.spec.uid != second.spec.uid
    assert first.spec.hardware.generation_id != second.spec.hardware.generation_id
    assert first.restored_from == tpl["snapshot_id"]
    assert first.spec.disk_chain[0] in host.files  # its own layer, made ahead

    inst = launch(root, svc, "web", "tiny")
    assert inst["id"] == first.spec.instance_id  # the VM that QEMU was started for
    assert inst["template_id"] == tpl["id"]
    phases = {p["event"]: p["at"] for p in inst["boot"]["phases"]}
    assert phases["taken_from_pool"] is not None and phases["process_started"] is None
    made = svc.instances.get(inst["id"])
    assert made.uid == first.spec.uid
    assert made.hardware is not None
    assert made.hardware.generation_id == first.spec.hardware.generation_id
    layer = svc.instances.disks.store.get(made.root_layer or "")
    assert layer is not None and host.path(layer.path) == first.spec.disk_chain[0]
    assert layer.backing == svc.snapshots.store.by_id(tpl["snapshot_id"]).layer  # type: ignore[union-attr]

    shown = filled(root, svc, 2)
    assert shown["waiting"] == 2 and shown["taken"] == 1
    assert inst["id"] not in host.waiting and second.spec.instance_id in host.waiting


def test_two_launches_at_once_each_take_their_own(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 2)
    waiting = set(host.waiting)
    ops = []
    for name in ("a", "b"):
        resp = root.post("/v1/instances", json={"name": name, "image": "tiny"})
        assert resp.status_code == 202, resp.text
        ops.append(resp.json())
    for made in ops:
        assert finish(root, svc, made["operation"]["id"]).error is None
    assert {m["instance"]["id"] for m in ops} == waiting
    assert filled(root, svc, 2)["waiting"] == 2


def test_a_launch_refused_puts_its_qemu_back(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 1)
    waiting = set(host.waiting)
    quota = root.patch("/v1/projects/default/quotas", json={"max_instances": 0})
    assert quota.status_code == 200, quota.text
    resp = root.post("/v1/instances", json={"name": "web", "image": "tiny"})
    assert resp.status_code in (403, 409, 429), resp.text
    assert set(host.waiting) == waiting  # the same QEMU, not a new one
    assert root.get("/v1/host/pool").json()["taken"] == 0
    bad = root.post("/v1/instances", json={"name": "no way!", "image": "tiny"})
    assert bad.status_code == 400 and set(host.waiting) == waiting


def test_a_taken_qemu_that_fails_leaves_nothing_when_its_instance_goes(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 1)
    before = host.state()
    host.fail_at, host.fail_on = "start", host.calls.count("start") + 1
    resp = root.post("/v1/instances", json={"name": "web", "image": "tiny"})
    op = finish(root, svc, resp.json()["operation"]["id"])
    assert op.error is not None
    host.fail_at = None
    inst_id = resp.json()["instance"]["id"]
    assert root.delete(f"/v1/instances/{inst_id}", params={"force": "true"}).status_code == 200
    root.put("/v1/host/pool", json={"size": 0})
    root.portal.call(svc.templates.pool.fill)  # type: ignore[union-attr]
    assert host.waiting == {}
    left = host.state().without(before)
    assert not left, left


def test_the_pool_drops_what_no_launch_can_use(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    filled(root, svc, 2)
    # The image changes: its template's version is not the image's any more.
    svc.images.store.put(Image("tiny", "v2", "6.1", str(svc.config.images_dir / "tiny" / "v2")))
    root.portal.call(svc.templates.pool.fill)  # type: ignore[union-attr]
    assert host.waiting == {}
    assert root.get("/v1/host/pool").json()["templates"] == []
    inst = launch(root, svc, "web", "tiny")
    assert inst["template_id"] is None  # a clone of the old version is never made
    svc.images.store.put(Image("tiny", "v1", "6.1", str(svc.config.images_dir / "tiny" / "v1")))
    root.delete(f"/v1/instances/{inst['id']}", params={"force": "true"})
    filled(root, svc, 1)
    assert len(host.waiting) == 1
    removed = root.delete("/v1/images/tiny/templates").json()["removed"]
    assert removed == [tpl["id"]] and host.waiting == {}


def test_the_pool_shrinks_and_stops_at_the_hosts_memory(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 3)
    assert filled(root, svc, 1)["waiting"] == 1 and len(host.waiting) == 1
    # Room for the template's clones' memory, and for one waiting QEMU more, not two.
    used = svc.instances.admission.committed()[1]
    host.memory_mib = used + pool.WAITING_QEMU_MIB + pool.WAITING_QEMU_MIB // 2
    root.put("/v1/host/pool", json={"size": 3})
    with pytest.raises(TimeoutError):
        root.portal.call(svc.templates.pool.filled, 0.5)  # type: ignore[union-attr]
    shown = root.get("/v1/host/pool").json()
    assert shown["waiting"] == 2 and "not enough host memory" in shown["last_error"]


def test_the_pool_ends_with_the_service_and_its_size_stays(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 2)
    root.portal.call(svc.templates.pool.close)  # type: ignore[union-attr]
    assert host.waiting == {}
    assert svc.templates.pool.size == 2  # kept in the store: the next start fills it again


@pytest.mark.parametrize("size", [-1, 17, "2", True, None])
def test_a_bad_size_is_refused(world: World, size: object) -> None:
    root, _, _ = world
    resp = root.put("/v1/host/pool", json={"size": size})
    assert resp.status_code in (400, 422), resp.text
    assert root.get("/v1/host/pool").json()["size"] == 0


def test_the_pool_is_the_administrators(world: World) -> None:
    root, svc, _ = world
    svc.tenancy.create_user("mark")
    token = svc.tenancy.create_token(SUPERUSER, "mark", "t")[1]
    headers = {"Authorization": f"Bearer {token}"}
    assert root.get("/v1/host/pool", headers=headers).status_code == 403
    assert root.put("/v1/host/pool", json={"size": 2}, headers=headers).status_code == 403


def test_the_instance_adopts_the_macs_its_qemu_was_started_with(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    filled(root, svc, 1)
    (waiting,) = host.waiting.values()
    saved = svc.snapshots.store.by_id(tpl["snapshot_id"])
    assert saved is not None and saved.hardware is not None
    started = [mac for _slot, mac, _net in waiting.spec.hardware.nics]
    assert started != [mac for _slot, mac, _net in saved.hardware.nics]  # its own, not the
    inst = launch(root, svc, "web", "tiny")  # template's: a guest reset takes QEMU's again
    assert [n["mac"] for n in inst["nics"]] == started


def test_a_qemu_started_for_a_template_removed_meanwhile_is_ended(world: World) -> None:
    root, svc, host = world
    tpl = make_template(root, svc)
    real = host.start_waiting

    async def removed_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        pid = await real(*args, **kwargs)
        svc.templates.store.remove(tpl["id"])  # as `image template --delete` would, meanwhile
        return pid

    host.start_waiting = removed_meanwhile  # type: ignore[method-assign]
    svc.templates.pool.settings.put(pool.SIZE_SETTING, "1")
    root.portal.call(svc.templates.pool.fill)  # type: ignore[union-attr]
    assert host.waiting == {} and root.get("/v1/host/pool").json()["waiting"] == 0


def test_a_qemu_given_back_after_the_pool_closed_is_ended(world: World) -> None:
    root, svc, host = world
    make_template(root, svc)
    filled(root, svc, 1)
    (tpl_id,) = [t.id for t in svc.templates.store.list()]
    entry = root.portal.call(svc.templates.pool.take, tpl_id)  # type: ignore[union-attr]
    assert entry is not None
    root.portal.call(svc.templates.pool.close)  # type: ignore[union-attr]
    root.portal.call(svc.templates.pool.give_back, entry)  # type: ignore[union-attr]
    assert host.waiting == {} and root.get("/v1/host/pool").json()["waiting"] == 0
