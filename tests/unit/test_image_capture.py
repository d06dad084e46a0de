"""Images a project makes from its instances (issue 16's CreateImage, `gureum image create`), on
a fake host through the real API: the image is the project's own (another project's members get
404 for it everywhere, its viewers cannot delete it), it counts against the snapshot quota, a
refusal or a failure leaves nothing, and the names stay one namespace."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.errors import InvalidArchive
from gureum.model.tenancy import Role
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakeworld import fake_services, finish


class Team:
    """The API as one user sees it over TCP, acting in one project."""

    def __init__(self, client: TestClient, secret: str, project: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {secret}", "X-Gureum-Project": project}

    def __getattr__(self, method: str):  # get, post, delete
        call = getattr(self.client, method)
        return lambda url, **kw: call(url, headers=self.headers, **kw)


@pytest.fixture
def world(tmp_path):
    svc, host = fake_services(tmp_path, ("tiny",))
    t = svc.tenancy
    people = {}
    with TestClient(create_app(svc, "tcp")) as tcp:
        for name, project, role in (
            ("alice", "team-a", Role.MEMBER),
            ("vera", "team-a", Role.VIEWER),
            ("bob", "team-b", Role.MEMBER),
        ):
            if t.store.project(project) is None:
                t.create_project(project, {"max_snapshots": 2})
            user = t.create_user(name)
            t.store.set_role(t.store.project(project).id, user.id, role)
            people[name] = Team(tcp, t.create_token(SUPERUSER, name, "test")[1], project)
        yield svc, host, tcp, people
    svc.close()


def launched(svc, tcp: TestClient, who: Team, name: str, image: str = "tiny") -> dict:
    resp = who.post("/v1/instances", json={"name": name, "image": image})
    assert resp.status_code == 202, resp.text
    op = finish(tcp, svc, resp.json()["operation"]["id"])
    assert op.error is None, op.error
    return resp.json()["instance"]


def made(svc, tcp: TestClient, who: Team, name: str, instance: str):
    resp = who.post("/v1/images", json={"name": name, "instance": instance, "description": "base"})
    assert resp.status_code == 202, resp.text
    return finish(tcp, svc, resp.json()["id"])


def test_an_image_of_an_instance_is_its_projects_alone(world):
    svc, host, tcp, people = world
    alice, vera, bob = people["alice"], people["vera"], people["bob"]
    launched(svc, tcp, alice, "web")
    op = made(svc, tcp, alice, "golden", "web")
    assert op.error is None, op.error
    image = op.result["image"]
    assert image["project_id"] == svc.tenancy.store.project("team-a").id
    assert image["origin"].startswith("from instance web (i-") and image["description"] == "base"
    assert "capture_image" in host.calls
    # Its project sees it and launches it; the launch records the new image.
    assert "golden" in [i["name"] for i in alice.get("/v1/images").json()]
    assert "golden" in [i["name"] for i in vera.get("/v1/images").json()]
    clone = launched(svc, tcp, alice, "web2", "golden")
    assert svc.instances.get(clone["id"]).spec.image == "golden"
    # Another project's member: 404 everywhere, as for an image that does not exist.
    assert "golden" not in [i["name"] for i in bob.get("/v1/images").json()]
    for resp in (
        bob.get("/v1/images/golden"),
        bob.delete("/v1/images/golden"),
        bob.post("/v1/instances", json={"name": "x", "image": "golden"}),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["message"] == "no image named 'golden'"
    # A viewer of the project cannot delete it; a member can once no instance uses it.
    assert vera.delete("/v1/images/golden").status_code == 403
    assert alice.delete("/v1/images/golden").status_code == 409  # web2 uses it
    assert alice.delete(f"/v1/instances/{clone['id']}?force=true").status_code == 200
    assert alice.delete("/v1/images/golden").status_code == 200
    assert svc.images.store.get("golden") is None
    # The host's catalog is the administrator's.
    assert alice.delete("/v1/images/tiny").status_code == 403


def test_images_count_against_the_snapshot_quota_and_names_are_one_namespace(world):
    svc, _, tcp, people = world
    alice, bob = people["alice"], people["bob"]
    launched(svc, tcp, alice, "web")
    launched(svc, tcp, bob, "db")
    assert made(svc, tcp, alice, "one", "web").error is None
    assert made(svc, tcp, alice, "two", "web").error is None
    over = alice.post("/v1/images", json={"name": "three", "instance": "web"})
    assert over.status_code == 409 and over.json()["error"]["code"] == "quota-exceeded", over.text
    taken = bob.post("/v1/images", json={"name": "one", "instance": "db"})
    assert taken.status_code == 409 and "already exists" in taken.text
    assert bob.post("/v1/images", json={"name": "tiny", "instance": "db"}).status_code == 400
    bad = bob.post("/v1/images", json={"name": "no/slash", "instance": "db"})
    assert bad.status_code == 400
    foreign = bob.post("/v1/images", json={"name": "mine", "instance": "web"})
    assert foreign.status_code == 404  # alice's instance
    # A project that holds images is not deleted with them in it.
    with TestClient(create_app(svc)) as root:
        resp = root.delete("/v1/projects/team-a")
        assert resp.status_code == 409 and "image one" in resp.text, resp.text


def test_a_failed_copy_leaves_no_image_and_gives_back_the_name_and_the_quota(world):
    svc, host, tcp, people = world
    alice = people["alice"]
    launched(svc, tcp, alice, "web")
    host.fail_at = "capture_image"
    op = made(svc, tcp, alice, "golden", "web")
    assert op.error is not None and "injected failure" in op.error["message"]
    assert svc.images.store.get("golden") is None
    assert svc.images.pending(svc.tenancy.store.project("team-a").id) == []
    assert not [s for s in svc.snapshots.store.list() if s.name.startswith("_")]  # none left
    host.fail_at = None
    for name in ("golden", "silver"):  # the name and both quota places are free again
        assert made(svc, tcp, alice, name, "web").error is None


def test_a_backup_naming_another_projects_image_is_refused(world, tmp_path):
    """An imported backup's manifest names its image: another project's would have counted as a
    use of it (its owners could no longer delete it) and lent its user and boot files."""
    svc, _, tcp, people = world
    alice, bob = people["alice"], people["bob"]
    launched(svc, tcp, alice, "web")
    assert made(svc, tcp, alice, "golden", "web").error is None
    image = svc.images.store.get("golden")
    inst = svc.instances.get(launched(svc, tcp, bob, "db")["id"])
    work = tmp_path / "w"
    (work / "in").mkdir(parents=True)
    (work / "in" / "disk.qcow2").write_bytes(b"x")
    config = {"name": "x", "image": "golden", "image_version": image.version,
              "cpus": inst.spec.cpus, "memory_mib": inst.spec.memory_mib,
              "disk_bytes": inst.spec.disk_bytes, "memory": False, "consistency": "offline",
              "hardware": inst.hardware.to_json()}  # fmt: skip
    manifest = {"files": {"disk.qcow2": {}}, "config": config}
    team_b = svc.tenancy.store.project("team-b").id
    with pytest.raises(InvalidArchive, match="another project's"):
        tcp.portal.call(svc.backups._create, manifest, work, "stolen", team_b)
    assert [i.name for i in svc.instances.list(team_b)] == ["db"]
    # Even an instance of B that names it (as one imported before this check could) is no use
    # of A's image, and gets none of its files or its user.
    svc.instances.store.update(inst.id, image="golden", image_version=image.version)
    named = svc.instances.get(inst.id)
    assert svc.images.of_instance(named) is None
    assert svc.capture.disks.private_image_files(named) == []
    assert "project-images" not in str(svc.capture.disks.image_folder(named))
    assert alice.delete("/v1/images/golden").status_code == 200


def test_a_source_deleted_during_the_copy_leaves_no_file(world):
    svc, host, tcp, people = world
    alice = people["alice"]
    web = launched(svc, tcp, alice, "web")
    real = host.capture_image

    async def and_delete(chain, boot, folder):
        facts = await real(chain, boot, folder)  # the copy is made (the fake host notes it)
        await svc.instances.delete(web["id"], force=True)
        return facts

    host.capture_image = and_delete  # type: ignore[method-assign]
    op = made(svc, tcp, alice, "golden", "web")
    assert op.error is not None
    assert not [f for f in host.files if svc.config.project_images_dir in f.parents]
    assert svc.images.store.get("golden") is None
    assert svc.quotas.held.of(svc.tenancy.store.project("team-a").id)["snapshots"] == 0


def test_a_refused_name_gives_back_the_quota_and_the_result_hides_the_path(world):
    svc, _, tcp, people = world
    alice = people["alice"]
    launched(svc, tcp, alice, "web")
    team_a = svc.tenancy.store.project("team-a").id
    release = svc.images.reserve("gold", team_a)  # a create of that name under way
    taken = alice.post("/v1/images", json={"name": "gold", "instance": "web"})
    assert taken.status_code == 409
    release()
    assert svc.quotas.held.of(team_a)["snapshots"] == 0
    op = made(svc, tcp, alice, "gold", "web")
    assert op.error is None and op.result["image"]["path"] is None
