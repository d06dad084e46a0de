"""Failures that say why (issue 11, item 8): a refused delete names what still uses the thing,
and what gureum made by itself (a project's default network and group) never blocks one."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.api import tls
from gureum.client.client import ApiError, Client, Endpoint
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Services, FakeHost]]:
    with fake_api(tmp_path, ("tiny",)) as world:
        yield world


def test_a_projects_default_network_and_group_do_not_block_its_delete(
    api: tuple[TestClient, Services, FakeHost],
) -> None:
    root, svc, _ = api
    assert root.post("/v1/projects", json={"name": "team-a"}).status_code in (200, 201)
    project = svc.quotas.project("team-a")
    # What a first launch in the project makes by itself:
    root.portal.call(svc.networks.default, project.id)  # type: ignore[union-attr]  # portal: set
    svc.secgroups.default(project.id)
    resp = root.delete("/v1/projects/team-a")
    assert resp.status_code == 200, resp.text
    assert svc.networks.list(project.id) == []
    assert svc.secgroups.list(project.id) == []


def test_a_refused_project_delete_names_what_is_left(
    api: tuple[TestClient, Services, FakeHost],
) -> None:
    root, _, _ = api
    root.post("/v1/projects", json={"name": "team-a"})
    who = {"X-Gureum-Project": "team-a"}
    lab = {"name": "lab", "subnet": "10.9.0.0/24"}
    assert root.post("/v1/networks", json=lab, headers=who).status_code in (200, 201)
    assert root.post("/v1/secgroups", json={"name": "web"}, headers=who).status_code in (200, 201)
    resp = root.delete("/v1/projects/team-a")
    assert resp.status_code == 409, resp.text
    message = resp.json()["error"]["message"]
    assert "network lab" in message and "security group web" in message, message


async def _launch(svc: Services, name: str, group: str) -> None:
    _, op = await svc.instances.launch(LaunchRequest(name, "tiny", secgroups=(group,)))
    while not op.done:
        op = await svc.ops.wait(op.id, timeout=5, progress_after=len(op.progress))
    assert op.error is None, op.error


def test_a_refused_secgroup_delete_names_the_instances_and_groups_using_it(
    api: tuple[TestClient, Services, FakeHost],
) -> None:
    root, svc, _ = api
    root.post("/v1/secgroups", json={"name": "web"})
    root.post("/v1/secgroups", json={"name": "lb"})
    root.post("/v1/secgroups", json={"name": "db"})
    rule = {"ingress": "tcp/80", "from_group": "db"}
    assert root.post("/v1/secgroups/lb/rules", json=rule).status_code in (200, 201)
    root.portal.call(_launch, svc, "front", "web")  # type: ignore[union-attr]  # portal: set
    resp = root.delete("/v1/secgroups/web")
    assert resp.status_code == 409, resp.text
    assert "in use by front" in resp.json()["error"]["message"]
    resp = root.delete("/v1/secgroups/db")
    assert resp.status_code == 409, resp.text
    assert "rule of lb" in resp.json()["error"]["message"]


def test_serve_on_a_taken_address_says_so_in_one_line_and_leaves_no_socket(
    tmp_path: Path,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    home = tmp_path / "home"
    env = {**os.environ, "GUREUM_HOME": str(home), "GUREUM_LISTEN": f"127.0.0.1:{port}"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gureum.cli.main", "serve"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        taken.close()
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use (another "
        "gureum or another program; stop it or set GUREUM_LISTEN to a free address) "
        "[address-in-use]"
    ], done.stderr
    assert not (home / "gureum.sock").exists()


def test_an_unpinned_tls_server_says_so_and_how_to_pin_it(tmp_path: Path) -> None:
    """GUREUM_URL straight at a gureum TLS listener: its self-signed certificate is pinned
    nowhere, and the refusal says that (not "other than the one pinned") and how to pin it."""
    cert, key, _ = tls.ensure(tmp_path / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True):
            pass

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    url = f"https://127.0.0.1:{port}"
    client = Client(Endpoint.from_env({"GUREUM_URL": url, "HOME": str(tmp_path)}))
    try:
        with pytest.raises(ApiError) as caught:
            client.whoami()
    finally:
        client.close()
        server.join(5)
        listener.close()
    message = caught.value.message
    assert caught.value.code == "untrusted"
    assert "no certificate is pinned" in message, message
    assert f"gureum remote add NAME {url}" in message, message
