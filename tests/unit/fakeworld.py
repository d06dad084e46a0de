"""A whole service over a FakeHost, with images in its catalog, for unit tests of the service and
the API: one way to make it, so each test file does not grow its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.model.image import Image
from gureum.model.operation import Operation
from gureum.service.core import Services
from gureum.units import MIB
from tests.unit.fakehost import FakeHost


def fake_services(
    tmp_path: Path, images: tuple[str, ...] = (), disk_bytes: int = 64 * MIB
) -> tuple[Services, FakeHost]:
    """Services on a FakeHost under ``tmp_path/home``, with the default project and a built
    image (version v1, kernel 6.1) of each name in ``images``; no rate limit."""
    config = load_config(tmp_path / "home", env={"GUREUM_RATE_LIMIT": "0"})
    host = FakeHost(config)
    svc = Services.build(config, host=host)
    svc.tenancy.ensure_default()
    for name in images:
        folder = config.images_dir / name / "v1"
        svc.images.store.put(Image(name, "v1", "6.1", str(folder), disk_virtual_bytes=disk_bytes))
    return svc, host


def finish(root: TestClient, svc: Services, op_id: str) -> Operation:
    """Wait, on the app's own event loop, for an operation to end; the ended operation."""

    return root.portal.call(svc.ops.finished, op_id, 30)  # type: ignore[union-attr]  # portal: set by the context manager


def launch(root: TestClient, svc: Services, name: str, image: str, **body: object) -> dict:
    """Launch through the API and wait for the launch to finish; the instance's view then."""
    resp = root.post("/v1/instances", json={"name": name, "image": image, **body})
    assert resp.status_code == 202, resp.text
    op = finish(root, svc, resp.json()["operation"]["id"])
    assert op.error is None, op.error
    return root.get(f"/v1/instances/{resp.json()['instance']['id']}").json()  # type: ignore[no-any-return]


@contextmanager
def fake_api(
    tmp_path: Path, images: tuple[str, ...] = ()
) -> Iterator[tuple[TestClient, Services, FakeHost]]:
    """``fake_services`` behind the real API: (a client with the root token, services, host)."""
    svc, host = fake_services(tmp_path, images)
    try:
        with TestClient(create_app(svc)) as root:
            yield root, svc, host
    finally:
        svc.close()
