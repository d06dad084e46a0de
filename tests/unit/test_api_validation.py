"""The HTTP API's answers to bad input, on a real service with a real store and no VM.

Nothing here boots QEMU: every request is refused before the host is touched, which is the
point (bad input leaves nothing behind).
"""

import time

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.model.image import Image
from gureum.service.core import Services
from gureum.store.images import ImageStore


@pytest.fixture
def api(tmp_path):
    svc = Services.build(load_config(tmp_path, env={"GUREUM_MEMORY_RESERVE_MIB": "0"}))
    ImageStore(svc.db).put(
        Image(
            name="tiny",
            version="v1",
            kernel_version="6.1",
            path=str(tmp_path / "images/tiny/v1"),
            files={},
            packages={},
            disk_virtual_bytes=512 << 20,
            built_at=time.time(),
        )
    )
    with TestClient(create_app(svc)) as client:
        client.svc = svc
        yield client
    svc.close()


def error_of(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def launch(api, **body):
    return api.post("/v1/instances", json={"name": "web1", "image": "tiny", **body})


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"image": "nope"}, 404, "not-found", "no image named 'nope'"),
        ({"memory_mib": 0}, 400, "invalid-input", "memory must be at least"),
        ({"memory_mib": -512}, 400, "invalid-input", "memory must be at least"),
        ({"memory_mib": "lots"}, 400, "invalid-input", "memory_mib"),
        ({"cpus": 0}, 400, "invalid-input", "cpus must be"),
        ({"cpus": 10000}, 400, "invalid-input", "cpus must be"),
        ({"cpus": 200}, 409, "insufficient-capacity", "not enough host CPUs"),
        ({"memory_mib": 64 * 1024 * 1024}, 409, "insufficient-capacity", "not enough host memory"),
        ({"name": "web/1"}, 400, "invalid-input", "invalid instance name"),
        ({"name": "web 1"}, 400, "invalid-input", "invalid instance name"),
        ({"name": "w" * 200}, 400, "invalid-input", "invalid instance name"),
        ({"name": "web1\n"}, 400, "invalid-input", "invalid instance name"),
        ({"disk_gib": 0.1}, 400, "invalid-input", "at least the image's size"),
        ({"disk_gib": -2}, 400, "invalid-input", "positive size"),
        ({"colour": "blue"}, 400, "invalid-input", "unknown field"),
    ],
)
def test_bad_launches_leave_nothing(api, body, status, code, words):
    message = error_of(launch(api, **body), status, code)
    assert words in message
    assert api.get("/v1/instances").json() == []
    assert api.get("/v1/operations").json() == []
    home = api.svc.config
    assert list(home.run_dir.iterdir()) == [] and list(home.instances_dir.iterdir()) == []


def test_malformed_bodies(api):
    resp = api.post(
        "/v1/instances", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in error_of(resp, 400, "invalid-input")
    error_of(api.post("/v1/instances", json=[1, 2]), 400, "invalid-input")
    error_of(api.post("/v1/instances", json={"image": "tiny"}), 400, "invalid-input")


def test_unknown_things(api):
    error_of(api.get("/v1/instances/ghost"), 404, "not-found")
    error_of(api.post("/v1/instances/ghost/stop"), 404, "not-found")
    error_of(api.delete("/v1/instances/ghost"), 404, "not-found")
    error_of(api.post("/v1/instances/ghost/exec", json={"command": ["true"]}), 404, "not-found")
    error_of(api.get("/v1/operations/op-nothing"), 404, "not-found")
    error_of(api.get("/v1/no/such/route"), 404, "not-found")
    error_of(api.post("/v1/images/ubuntu/build"), 404, "not-found")
    assert "tiny-x" in error_of(api.get("/v1/images/tiny-x"), 404, "not-found")


def test_exec_needs_a_command(api):
    error_of(api.post("/v1/instances/x/exec", json={"command": []}), 400, "invalid-input")


def test_openapi_and_host(api):
    doc = api.get("/openapi.json").json()
    assert "/v1/instances" in doc["paths"] and "/v1/instances/{ref}/exec" in doc["paths"]
    host = api.get("/v1/host").json()
    assert host["accel"] in ("kvm", "tcg")
    assert host["capacity"]["memory_reserve_mib"] == 0
    assert api.get("/v1/version").json()["api"] == "v1"


def test_home_too_long_for_sockets_is_refused(tmp_path):
    from gureum.errors import InvalidInput

    deep = tmp_path / ("d" * 90)
    with pytest.raises(InvalidInput, match="107-byte limit"):
        Services.build(load_config(deep, env={}))


def test_instance_views_match_their_model(api):
    """List and show skip the model's validation for speed; this holds them to it (every field
    of InstanceOut present with its type, and nothing the model does not document)."""
    from gureum.api.schemas import InstanceOut
    from gureum.model.instance import Instance, InstanceSpec, State
    from gureum.store.instances import InstanceStore

    store = InstanceStore(api.svc.db)
    for i, state in enumerate((State.STOPPED, State.ERROR)):
        spec = InstanceSpec(f"vm{i}", "tiny", 2, 512, 2 << 30)
        store.insert(Instance(f"i-00000000000{i}", spec, state, time.time(), "v1"))
    listed = api.get("/v1/instances").json()
    shown = api.get("/v1/instances/vm1").json()
    assert [v["name"] for v in listed] == ["vm0", "vm1"] and shown == listed[1]
    for view in listed:
        assert set(view) == set(InstanceOut.model_fields)
        assert InstanceOut.model_validate(view).model_dump(mode="json") == view
    assert shown["project"] == "default" and shown["cpus"] == 2
