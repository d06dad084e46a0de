"""The tiny image: catalog contents, idempotent rebuilds, and resuming an interrupted build."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from gureum.cli.main import ExitCode
from tests.integration.conftest import Service, new_home

pytestmark = pytest.mark.vm


def test_catalog_records_what_the_image_is(service):
    img = json.loads(service.cli("image", "show", "tiny", "-o", "json").stdout)
    assert img["kernel_version"].endswith("-cloud-amd64")
    assert set(img["files"]) == {"kernel", "initrd", "disk"}
    for meta in img["files"].values():
        assert meta["bytes"] > 0 and len(meta["sha256"]) == 64
    for pkg in ("qemu-guest-agent", "busybox-static", "libc6", "e2fsprogs"):
        assert pkg in img["packages"]
    assert img["disk_virtual_bytes"] == 512 * 1024 * 1024
    assert service.cli("image", "verify", "tiny").stdout.strip() == "tiny: ok"
    listed = json.loads(service.cli("image", "list", "-o", "json").stdout)
    assert "tiny" in [i["name"] for i in listed]  # (debian too, if its tests ran first)


def test_rebuild_with_same_inputs_is_a_no_op(service):
    before = json.loads(service.cli("image", "show", "tiny", "-o", "json").stdout)
    folder = Path(before["path"])
    files = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    out = json.loads(service.cli("image", "build", "tiny", "-o", "json").stdout)
    assert out["built"] is False and out["image"]["version"] == before["version"]
    # Nothing was written again (not timed: the machine's load is not the test's business).
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == files


def test_image_in_use_cannot_be_deleted(service):
    service.launch("user1")
    try:
        res = service.cli("image", "delete", "tiny", check=False)
        assert res.returncode == ExitCode.REFUSED and "[conflict]" in res.stderr
        assert "used by 1" in res.stderr
    finally:
        service.cli("delete", "user1", "--force")


def test_interrupted_build_resumes(tmp_path):
    svc = Service(new_home())
    try:
        svc.start()
        with svc.client() as c:
            op = c.build_image("tiny")
            # Kill the service as soon as the downloads are done and the next step has begun.
            for item in c.follow(op["id"], timeout=600):
                if "progress" in item and "assembling" in item["progress"]["message"]:
                    break
        svc.kill(signal.SIGKILL)
        svc.start()
        with svc.client() as c:
            interrupted = c.operation(op["id"])
            assert interrupted["status"] == "failed"
            assert interrupted["error"]["code"] == "interrupted"
            assert c.images() == []  # a half-built image is never listed
        out = svc.cli("image", "build", "tiny")
        assert "download: done in an earlier run, reused" in out.stderr
        assert "built" in out.stdout
        assert svc.cli("image", "verify", "tiny").stdout.strip() == "tiny: ok"
    finally:
        svc.cleanup()
