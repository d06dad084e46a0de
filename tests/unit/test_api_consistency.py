"""The API's conventions, checked on the real app in this process (issue 10, item 6): path
parameters named one way; work that boots or copies is an operation; a request that changes
state is never a GET, and is audited."""

from __future__ import annotations

import re
import time

import pytest

from gureum.client.client import ApiError
from tests.unit.inprocess import client_class, put_image, service

# {ref} is an instance, always; every other parameter is named for what it picks out.
PARAMETERS = {"ref", "snapshot", "image", "network", "secgroup", "rule", "nic", "forward",
              "project", "user", "token", "operation", "keypair", "host"}  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def api(tmp_path):
    with service(tmp_path) as http:
        yield http


def error_of(resp, status, code):
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    return resp.json()["error"]["message"]


def test_path_parameters_are_named_one_way(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert len(paths) > 30
    for path in paths:
        names = re.findall(r"\{([^}]+)\}", path)
        assert set(names) <= PARAMETERS, path
        if "ref" in names:
            assert path.startswith("/v1/instances/{ref}"), path


def test_no_get_route_is_named_for_an_action(api):
    """Reads only: a GET path ending in a verb would be a change of state behind a GET."""
    verbs = {"backup", "export", "verify", "build", "start", "stop", "restart", "restore",
             "clone", "resize", "exec", "import"}  # fmt: skip
    for path, methods in api.get("/openapi.json").json()["paths"].items():
        if "get" in methods:
            assert path.rsplit("/", 1)[-1] not in verbs, f"GET {path}"


def test_the_backup_export_is_a_post_and_is_audited(api, monkeypatch):
    async def export(ref, *, memory=False, project_id=None):
        async def archive():
            yield f"archive of {ref}, memory {memory}".encode()

        return f"{ref}.gbk", archive()

    monkeypatch.setattr(api.svc.backups, "export", export)
    error_of(api.get("/v1/instances/web1/backup"), 405, "method-not-allowed")
    with client_class(api)() as client:
        out = _Sink()
        client.export("web1", out, memory=True)
    assert out.data == b"archive of web1, memory True"
    rows = api.get("/v1/audit").json()
    exports = [r for r in rows if r["action"] == "POST /v1/instances/{ref}/backup"]
    assert [(r["target"], r["result"]) for r in exports] == [("web1", 200)]
    assert not [r for r in rows if r["action"].startswith("GET")]


class _Sink:
    data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def wait(api, op):
    """The operation once it ends (a long poll also answers at each new progress line)."""
    done = op
    for _ in range(100):
        seen = done.get("progress_count", 0)
        done = api.get(
            f"/v1/operations/{op['id']}", params={"wait_s": 30, "progress_after": seen}
        ).json()
        if done["status"] != "running":
            break
    done = api.get(f"/v1/operations/{op['id']}").json()  # with all its progress
    assert done["status"] == "succeeded", done
    return done


def test_image_verify_is_an_operation_with_progress(api, tmp_path):
    kernel = put_image(api.svc, tmp_path)
    resp = api.post("/v1/images/tiny/verify")
    assert resp.status_code == 202 and resp.json()["kind"] == "image-verify"
    done = wait(api, resp.json())
    assert done["result"] == {"name": "tiny", "ok": True, "problems": []}
    assert [p["message"] for p in done["progress"]] == ["checking kernel", "intact"]
    kernel.unlink()
    done = wait(api, api.post("/v1/images/tiny/verify").json())
    assert done["result"]["ok"] is False and "missing" in done["result"]["problems"][0]
    error_of(api.post("/v1/images/ghost/verify"), 404, "not-found")


def test_backup_verify_checks_the_upload_then_runs_an_operation(api, monkeypatch):
    backups = api.svc.backups
    error_of(api.post("/v1/backups/verify", content=b"not a backup\n" * 100), 400,
             "invalid-archive")  # fmt: skip
    assert sum(backups.transfers._active.values()) == 0  # the slot went with the refusal
    seen = {}

    async def receive(body, work):
        async for _ in body:
            pass
        seen["work"] = work
        return {"config": "checked"}

    async def verify_received(manifest, work, name, project_id, started, ctx):
        seen["held"] = sum(backups.transfers._active.values())
        ctx.progress(f"importing {name}")
        return {"ok": True, "seconds": round(time.monotonic() - started, 3), "detail": "booted"}

    monkeypatch.setattr(backups, "_receive", receive)
    monkeypatch.setattr(backups, "_verify_received", verify_received)
    with client_class(api)() as client:
        op = client.verify_backup(_Source(b"an archive"))
        assert op["kind"] == "backup-verify" and op["status"] in ("running", "succeeded")
        done = client.wait(op["id"], timeout=30)
    assert done["result"]["ok"] is True and done["result"]["detail"] == "booted"
    assert done["progress"][0]["message"].startswith("importing verify-")
    assert seen["held"] == 1 and not seen["work"].exists()  # held while it ran; then gone
    assert sum(backups.transfers._active.values()) == 0


def test_a_failed_verify_operation_is_reported_as_an_error(api, monkeypatch):
    async def receive(body, work):
        return {}

    async def verify_received(*_):
        from gureum.errors import QuotaExceeded

        raise QuotaExceeded("the project's instances quota (0) would be passed")

    monkeypatch.setattr(api.svc.backups, "_receive", receive)
    monkeypatch.setattr(api.svc.backups, "_verify_received", verify_received)
    with client_class(api)() as client, pytest.raises(ApiError) as failed:
        client.wait(client.verify_backup(_Source(b"x"))["id"], timeout=30)
    assert failed.value.code == "quota-exceeded"


class _Source:
    """What the client uploads from: a file's ``read``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk
