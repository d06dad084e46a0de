"""Bad input through the CLI and the real service: a clear error with a code, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from gureum.cli.main import ExitCode, exit_for

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def busy(service):
    """A running VM to collide with."""
    service.launch("busy")
    yield
    service.cli("delete", "busy", "--force", check=False)


def snapshot(service) -> tuple:
    with service.client() as c:
        rows = sorted(i["id"] for i in c.instances())
    files = sorted(p.name for d in ("run", "instances") for p in (service.home / d).iterdir())
    return rows, files, sorted(service.qemu_pids())


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["launch", "nosuch", "--name", "x1"], "no image named 'nosuch'", "not-found"),
        (
            ["launch", "tiny", "--name", "x1", "--memory", "0"],
            "memory must be at least",
            "invalid-input",
        ),
        (
            ["launch", "tiny", "--name", "x1", "--memory", "-1"],
            "memory must be a size",
            "usage",  # refused by the CLI itself, before sending,
        ),
        (
            ["launch", "tiny", "--name", "x1", "--memory", "lots"],
            "memory must be a size",
            "usage",
        ),
        (
            ["launch", "tiny", "--name", "x1", "--memory", "100T"],
            "not enough host memory",
            "insufficient-capacity",
        ),
        (["launch", "tiny", "--name", "x1", "--cpus", "0"], "cpus must be", "invalid-input"),
        (["launch", "tiny", "--name", "x1", "--cpus", "10000"], "cpus must be", "invalid-input"),
        (
            ["launch", "tiny", "--name", "x1", "--disk", "1M"],
            "at least the image's size",
            "invalid-input",
        ),
        (["launch", "tiny", "--name", "busy"], "already exists", "conflict"),
        (["launch", "tiny", "--name", "web/1"], "invalid instance name", "invalid-input"),
        (["launch", "tiny", "--name", "web 1"], "invalid instance name", "invalid-input"),
        (["launch", "tiny", "--name", "n" * 200], "invalid instance name", "invalid-input"),
        (["delete", "busy"], "stop it first or delete with --force", "invalid-state"),
        (["stop", "ghost"], "no instance named 'ghost'", "not-found"),
        (["exec", "ghost", "--", "true"], "no instance named 'ghost'", "not-found"),
    ],
)
def test_refused_cleanly(service, busy, args, message, code):
    before = snapshot(service)
    res = service.cli(*args, check=False)
    assert res.returncode == exit_for(code), res.stdout
    assert message in res.stderr and f"[{code}]" in res.stderr
    assert "Traceback" not in res.stderr
    assert snapshot(service) == before


def test_a_cordoned_host_refuses_a_launch_and_keeps_running_its_own(service, busy):
    (here,) = json.loads(service.cli("host", "list", "-o", "json").stdout)
    assert here["local"] and here["state"] == "ready" and here["instances"] >= 1
    service.cli("host", "cordon", here["name"])
    try:
        before = snapshot(service)
        res = service.cli("launch", "tiny", "--name", "x1", check=False)
        assert res.returncode == exit_for("insufficient-capacity"), res.stderr
        assert f"{here['name']}: cordoned" in res.stderr
        assert snapshot(service) == before
        assert "busy" in service.exec("busy", "hostname")  # what is on it carries on
    finally:
        service.cli("host", "uncordon", here["name"])
    shown = json.loads(service.cli("show", "busy", "-o", "json").stdout)
    assert shown["placement"]["host"] == here["name"]


def test_malformed_body_over_the_real_socket(service, busy):
    transport = httpx.HTTPTransport(uds=str(service.home / "gureum.sock"))
    with httpx.Client(transport=transport, base_url="http://gureum") as http:
        resp = http.post("/v1/instances", content=b'{"name": "x", "image": ',
                         headers={"content-type": "application/json"})  # fmt: skip
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "invalid-input"
        doc = http.get("/openapi.json").json()
        assert doc["info"]["title"] == "gureum"


def test_service_down_message(tmp_path):
    env = {**os.environ, "GUREUM_HOME": str(tmp_path)}
    env.pop("GUREUM_URL", None)
    res = subprocess.run([sys.executable, "-m", "gureum.cli.main", "list"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == ExitCode.UNREACHABLE
    assert "not running" in res.stderr and "gureum serve" in res.stderr
