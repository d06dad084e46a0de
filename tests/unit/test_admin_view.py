"""An administrator's view (issue 11, item 9): every project's instances in one list, with the
project named; what a creation made named in the audit; a deleted user's name kept in the token
list; image builds among the operations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gureum.api.app import create_app
from gureum.cli.main import app
from gureum.config import load_config
from gureum.model.image import Image
from gureum.model.instance import DEFAULT_PROJECT
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from gureum.units import MIB
from tests.unit.fakehost import FakeHost
from tests.unit.inprocess import cli_against


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Services]]:
    """(root on the socket, the TCP app, the Services), on a FakeHost, with an image."""
    config = load_config(tmp_path / "home", env={"GUREUM_RATE_LIMIT": "0"})
    svc = Services.build(config, host=FakeHost(config))
    svc.tenancy.ensure_default()
    folder = config.images_dir / "tiny" / "v1"
    svc.images.store.put(Image("tiny", "v1", "6.1", str(folder), disk_virtual_bytes=64 * MIB))
    with TestClient(create_app(svc)) as root, TestClient(create_app(svc, "tcp")) as tcp:
        yield root, tcp, svc
    svc.close()


async def _launch(svc: Services, name: str, project: str) -> None:
    _, op = await svc.instances.launch(LaunchRequest(name, "tiny"), project_id=project)
    await _finish(svc, op.id)


async def _finish(svc: Services, op_id: str) -> None:
    op = await svc.ops.wait(op_id, timeout=5)
    while not op.done:
        op = await svc.ops.wait(op_id, timeout=5, progress_after=len(op.progress))
    assert op.error is None, op.error


def _token(root: TestClient, user: str, project: str) -> dict[str, str]:
    root.post("/v1/users", json={"name": user})
    root.put(f"/v1/projects/{project}/members/{user}", json={"role": "member"})
    secret = root.post("/v1/tokens", json={"user": user, "name": "t"}).json()["token"]
    return {"Authorization": f"Bearer {secret}"}


def test_list_all_projects_for_the_administrator_only(
    world: tuple[TestClient, TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, tcp, svc = world
    root.post("/v1/projects", json={"name": "team-a"})
    team_a = svc.quotas.project("team-a").id
    root.portal.call(_launch, svc, "web", DEFAULT_PROJECT)  # type: ignore[union-attr]  # portal: set
    root.portal.call(_launch, svc, "db", team_a)  # type: ignore[union-attr]  # portal: set
    assert [i["name"] for i in root.get("/v1/instances").json()] == ["web"]
    every = root.get("/v1/instances", params={"all_projects": "true"}).json()
    assert sorted((i["project"], i["name"]) for i in every) == [
        ("default", "web"),
        ("team-a", "db"),
    ]
    ada = _token(root, "ada", "team-a")
    refused = tcp.get("/v1/instances", params={"all_projects": "true"}, headers=ada)
    assert refused.status_code == 403, refused.text

    cli_against(monkeypatch, root)
    res = CliRunner().invoke(app, ["list", "--all-projects"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    header, *rows = res.stdout.splitlines()
    assert header.split()[:2] == ["PROJECT", "NAME"]
    assert sorted(r.split()[:2] for r in rows) == [["default", "web"], ["team-a", "db"]]


def test_a_creations_audit_entry_names_what_was_made(
    world: tuple[TestClient, TestClient, Services],
) -> None:
    root, _, _ = world
    assert root.post("/v1/users", json={"name": "ada"}).status_code == 201
    made = root.post("/v1/tokens", json={"user": "ada", "name": "laptop"}).json()
    net = root.post("/v1/networks", json={"name": "lab", "subnet": "10.9.0.0/24"}).json()
    launched = root.post("/v1/instances", json={"name": "web", "image": "tiny"})
    assert launched.status_code == 202, launched.text
    assert root.post("/v1/secgroups", json={"name": "fw"}).status_code == 201
    rule = root.post(
        "/v1/secgroups/fw/rules", json={"ingress": "tcp/22", "from_cidr": "10.0.0.0/8"}
    )
    assert rule.status_code == 201, rule.text
    entries = {e["action"]: e for e in root.get("/v1/audit").json()}
    assert entries["POST /v1/users"]["target"] == "ada"
    assert entries["POST /v1/networks"]["target"] == "lab"
    assert entries["POST /v1/networks"]["detail"] == {"created": net["id"]}
    assert entries["POST /v1/instances"]["target"] == "web"
    assert entries["POST /v1/secgroups/{secgroup}/rules"]["target"] == "fw"
    token = entries["POST /v1/tokens"]
    assert token["target"] == "laptop"
    assert made["token"] not in str(token)  # never the secret


def test_an_operations_audit_entry_names_the_thing_not_the_operation(
    world: tuple[TestClient, TestClient, Services],
) -> None:
    """A snapshot is made by an operation: its entry names the VM and the snapshot, and keeps
    the operation's id apart (it was filed as ``web/op-...``, as if the operation were made);
    a stop names only its VM."""
    root, _, svc = world
    root.portal.call(_launch, svc, "web", DEFAULT_PROJECT)  # type: ignore[union-attr]  # portal: set
    snap = root.post("/v1/instances/web/snapshots", json={"name": "before"})
    assert snap.status_code == 202, snap.text
    root.portal.call(_finish, svc, snap.json()["id"])  # type: ignore[union-attr]  # portal: set
    stop = root.post("/v1/instances/web/stop")
    assert stop.status_code == 202, stop.text
    entries = {e["action"]: e for e in root.get("/v1/audit").json()}
    made = entries["POST /v1/instances/{ref}/snapshots"]
    assert made["target"] == "web/before"
    assert made["detail"] == {"operation": snap.json()["id"]}
    stopped = entries["POST /v1/instances/{ref}/stop"]
    assert stopped["target"] == "web"
    assert stopped["detail"] == {"operation": stop.json()["id"]}


def test_token_list_keeps_a_deleted_users_name(
    world: tuple[TestClient, TestClient, Services],
) -> None:
    root, _, _ = world
    root.post("/v1/users", json={"name": "ada"})
    made = root.post("/v1/tokens", json={"user": "ada", "name": "laptop"}).json()
    assert root.delete("/v1/users/ada").status_code == 200
    listed = {t["id"]: t for t in root.get("/v1/tokens").json()}
    assert listed[made["id"]]["user"] == "ada"
    assert listed[made["id"]]["revoked_at"] is not None


def test_image_builds_are_in_the_administrators_operation_list(
    world: tuple[TestClient, TestClient, Services],
) -> None:
    root, tcp, svc = world

    async def build() -> str:
        async def work(_: object) -> None:
            return None

        op = svc.ops.start("image-build", "tiny", work)  # as images.build does: no project
        while not op.done:
            op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
        return op.id

    built = root.portal.call(build)  # type: ignore[union-attr]  # portal: set
    assert built in [o["id"] for o in root.get("/v1/operations").json()]
    ada = _token(root, "ada", "default")
    assert built not in [o["id"] for o in tcp.get("/v1/operations", headers=ada).json()]
