"""A hostile tenant at the API (issue 9): each test is one finding, reproduced as the attacker
did it, and stays here as part of the attack corpus.

In-process, on a real service and store; nothing boots a VM. ``tcp`` is the app as remote users
see it (a token on every call); ``root`` is the local socket's (the host's administrator).
"""

from __future__ import annotations

import math
import os

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.model.tenancy import Role
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER


class World:
    def __init__(self, svc: Services, tcp: TestClient, root: TestClient) -> None:
        self.svc, self.tcp, self.root = svc, tcp, root
        self.secrets: dict[str, str] = {}

    def person(self, name: str, project: str | None = None, role: Role = Role.MEMBER) -> str:
        """A user with a role in ``project`` and a token; the token's secret."""
        t = self.svc.tenancy
        user = t.store.user(name) or t.create_user(name)
        if project is not None:
            t.store.set_role(t.store.project(project).id, user.id, role)
        self.secrets[name] = t.create_token(SUPERUSER, name, "test")[1]
        return self.secrets[name]

    def as_(self, name: str, project: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.secrets[name]}"}
        if project:
            headers["X-Gureum-Project"] = project
        return headers


@pytest.fixture
def world(tmp_path):
    svc = Services.build(load_config(tmp_path, env={"GUREUM_RATE_LIMIT": "0"}))
    svc.tenancy.ensure_default()
    with TestClient(create_app(svc, "tcp")) as tcp, TestClient(create_app(svc)) as root:
        yield World(svc, tcp, root)
    svc.close()


def error_of(resp, status, code):
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text
    return resp.json()["error"]["message"]


# -- #5: a project admin raises the CPU limit past the grant; limits the kernel refuses ----------
def test_admin_cannot_raise_an_unset_cpu_limit_past_max_cpus(world):
    world.svc.tenancy.create_project("team-a", {"max_cpus": 4})
    world.person("ada", "team-a", Role.ADMIN)
    url, who = "/v1/projects/team-a/quotas", world.as_("ada")
    message = error_of(world.tcp.patch(url, json={"cpu_limit": 64}, headers=who), 403, "forbidden")
    assert "cpu_limit" in message and "4" in message
    assert world.svc.tenancy.store.project("team-a").cpu_limit is None
    assert world.tcp.patch(url, json={"cpu_limit": 4}, headers=who).status_code == 200
    assert world.tcp.patch(url, json={"cpu_limit": 1.5}, headers=who).json()["cpu_limit"] == 1.5


def test_admin_cannot_raise_a_cpu_limit_past_the_hosts_cores(world):
    """Neither cpu_limit nor max_cpus set: the ceiling is what the host has."""
    world.svc.tenancy.create_project("team-a", {})
    world.person("ada", "team-a", Role.ADMIN)
    url, who = "/v1/projects/team-a/quotas", world.as_("ada")
    cores = os.cpu_count() or 1
    resp = world.tcp.patch(url, json={"cpu_limit": cores + 1}, headers=who)
    error_of(resp, 403, "forbidden")
    assert world.tcp.patch(url, json={"cpu_limit": 0.5}, headers=who).status_code == 200


@pytest.mark.parametrize("limit", [1e-7, 0, 0.009, 1e30])
def test_a_cpu_limit_the_kernel_refuses_is_not_stored(world, limit):
    world.svc.tenancy.create_project("team-a", {"cpu_limit": 2})
    resp = world.root.patch("/v1/projects/team-a/quotas", json={"cpu_limit": limit})
    assert "cpu_limit" in error_of(resp, 400, "invalid-input")
    assert world.svc.tenancy.store.project("team-a").cpu_limit == 2
    resp = world.root.post("/v1/projects", json={"name": "team-b", "cpu_limit": limit})
    error_of(resp, 400, "invalid-input")
    assert world.svc.tenancy.store.project("team-b") is None


def test_a_cpu_limit_of_not_a_number_is_refused(world):
    world.svc.tenancy.create_project("team-a", {})
    for text in ("NaN", "Infinity"):
        resp = world.root.patch(
            "/v1/projects/team-a/quotas",
            content=f'{{"cpu_limit": {text}}}',
            headers={"content-type": "application/json"},
        )
        error_of(resp, 400, "invalid-input")
    assert world.svc.tenancy.store.project("team-a").cpu_limit is None
    assert math.isclose(
        world.root.patch("/v1/projects/team-a/quotas", json={"cpu_limit": 0.01}).json()[
            "cpu_limit"
        ],
        0.01,
    )
