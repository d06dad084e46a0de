"""The whole API in this process, with a real store and no VM, and the real client (so the CLI
too) talking to it: what a command sends, the route answers, and the command prints, end to
end, without a socket or a service."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.client.client import Client, Endpoint
from gureum.config import load_config
from gureum.model.image import Image
from gureum.service.core import Services
from gureum.store.images import ImageStore


@contextmanager
def service(home: Path) -> Iterator[TestClient]:
    """The app as root sees it on the local socket; ``.svc`` is its Services."""
    svc = Services.build(load_config(home, env={"GUREUM_MEMORY_RESERVE_MIB": "0"}))
    with TestClient(create_app(svc)) as http:
        http.svc = svc  # type: ignore[attr-defined]
        yield http
    svc.close()


def put_image(svc: Services, home: Path, name: str = "tiny") -> Path:
    """An image in the catalog with one real file (its kernel), checksum recorded; returns it."""
    folder = home / "images" / name / "v1"
    folder.mkdir(parents=True)
    kernel = folder / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()
    files: dict[str, dict[str, object]] = {
        "kernel": {"file": "vmlinuz", "bytes": kernel.stat().st_size, "sha256": digest}
    }
    ImageStore(svc.db).put(
        Image(name, "v1", "6.1", str(folder), files, {"linux-image": "6.1"}, 512 << 20, time.time())
    )
    return kernel


def client_class(http: TestClient) -> type[Client]:
    """A Client whose requests go to ``http`` (the app in this process)."""

    class InProcess(Client):
        def __init__(self, *_: object, **__: object) -> None:
            self.endpoint = Endpoint("http://testserver", None)
            self.http = http

        def close(self) -> None:  # the app's client outlives each command
            pass

    return InProcess


def cli_against(monkeypatch: pytest.MonkeyPatch, http: TestClient) -> None:
    """Every client the CLI makes talks to ``http``."""
    cls = client_class(http)
    for module in ("output", "instances", "images", "recovery", "system", "tenancy"):
        monkeypatch.setattr(f"gureum.cli.{module}.Client", cls)
