"""Every route of the API, from its OpenAPI document, called as every role against its own and
a foreign project. A new route without its check fails here: it must declare the role it needs
(``x-gureum-role``) and really refuse everyone below it.

In-process, on the TCP flavour of the app (where every call needs a token), with a real store;
bodies are empty, so nothing ever reaches a host (answers past the check are 400 or 404).
"""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.errors import QuotaExceeded
from gureum.model.tenancy import Role
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER

RANK = {"user": 0, "viewer": 1, "member": 2, "admin": 3, "superuser": 99}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    """The whole app on each store backend: every route's queries run on PostgreSQL too."""
    home = tmp_path_factory.mktemp("authz")
    env = {"GUREUM_RATE_LIMIT": "0"}
    if request.param == "postgresql":
        env["GUREUM_DATABASE_URL"] = request.getfixturevalue("postgres").new_database()
    svc = Services.build(load_config(home, env=env))
    svc.tenancy.ensure_default()
    t = svc.tenancy
    team_a = t.create_project("team-a", {})
    team_b = t.create_project("team-b", {})
    tokens = {}
    people = (("vera", team_a, Role.VIEWER), ("mark", team_a, Role.MEMBER),
              ("ada", team_a, Role.ADMIN), ("bob", team_b, Role.ADMIN))  # fmt: skip
    for name, project, role in people:
        user = t.create_user(name)
        t.store.set_role(project.id, user.id, role)
        tokens[name] = t.create_token(SUPERUSER, name, "test")[1]
    app = create_app(svc, "tcp")
    with TestClient(app) as client:
        yield client, tokens
    svc.close()


def operations(client, token):
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {token}"}).json()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            yield path, method.upper(), op


def call(client, method, path, token=None, project="team-a", path_project="team-a"):
    url = re.sub(r"\{project\}", path_project, path)
    url = re.sub(r"\{[^}]+\}", "nothing-here", url)
    headers = {"X-Gureum-Project": project}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, url, headers=headers, json=body)


def test_every_operation_declares_its_role(world):
    client, tokens = world
    ops = list(operations(client, tokens["ada"]))
    assert len(ops) > 50
    for path, method, op in ops:
        assert op.get("x-gureum-role") in RANK, f"{method} {path} declares no role"


def test_nothing_answers_without_a_token(world):
    client, tokens = world
    for path, method, _ in operations(client, tokens["ada"]):
        resp = call(client, method, path)
        assert resp.status_code == 401, (
            f"{method} {path} answered {resp.status_code} without a token"
        )
        assert resp.json()["error"]["code"] == "unauthenticated"
    assert client.get("/openapi.json").status_code == 401
    bad = client.get("/v1/instances", headers={"Authorization": "Bearer gur_forged"})
    assert bad.status_code == 401


@pytest.mark.parametrize("who", ["vera", "mark", "ada"])
def test_roles_in_their_own_project(world, who):
    client, tokens = world
    mine = {"vera": 1, "mark": 2, "ada": 3}[who]
    for path, method, op in operations(client, tokens[who]):
        needed = RANK[op["x-gureum-role"]]
        resp = call(client, method, path, tokens[who])
        if needed > mine:
            assert resp.status_code == 403, (
                f"{who} ({mine}) got {resp.status_code} on {method} {path}"
            )
            assert resp.json()["error"]["code"] == "forbidden"
        else:
            assert resp.status_code not in (401, 403), (
                f"{who} refused on {method} {path}: {resp.text}"
            )


def test_a_foreign_project_does_not_exist(world):
    """bob (admin of team-b) aiming at team-a: every project-scoped route answers 404, exactly
    as for a project that does not exist; routes needing no project still work for him."""
    client, tokens = world
    for path, method, op in operations(client, tokens["bob"]):
        role = op["x-gureum-role"]
        resp = call(client, method, path, tokens["bob"], project="team-a", path_project="team-a")
        missing = call(
            client, method, path, tokens["bob"], project="no-such", path_project="no-such"
        )
        if role in ("viewer", "member", "admin"):
            assert resp.status_code == 404, (
                f"bob got {resp.status_code} on team-a's {method} {path}"
            )
            assert resp.json() == {**resp.json()} and resp.json()["error"]["code"] == "not-found"
            assert resp.json()["error"]["message"].replace("team-a", "X") == missing.json()[
                "error"]["message"].replace("no-such", "X")  # fmt: skip
        elif role == "superuser":
            assert resp.status_code == 403
        else:
            assert resp.status_code not in (401, 403)


def test_revoked_token_fails_on_the_next_call(world):
    client, _ = world
    t = client.app.state.services.tenancy
    token, secret = t.create_token(SUPERUSER, "mark", "short-lived")
    headers = {"Authorization": f"Bearer {secret}", "X-Gureum-Project": "team-a"}
    assert client.get("/v1/instances", headers=headers).status_code == 200
    revoke = client.delete(f"/v1/tokens/{token.id}", headers=headers)
    assert revoke.status_code == 200 and revoke.json()["token"] is None  # the secret never again
    assert client.get("/v1/instances", headers=headers).status_code == 401


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    svc = Services.build(
        load_config(tmp_path, env={"GUREUM_RATE_LIMIT": "2", "GUREUM_RATE_BURST": "3"})
    )
    svc.tenancy.ensure_default()
    svc.tenancy.store.set_role("p-default", svc.tenancy.create_user("rita").id, Role.VIEWER)
    secret = svc.tenancy.create_token(SUPERUSER, "rita", "t")[1]
    with TestClient(create_app(svc, "tcp")) as client:
        headers = {"Authorization": f"Bearer {secret}"}
        codes = [client.get("/v1/instances", headers=headers).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        resp = client.get("/v1/instances", headers=headers)
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        time.sleep(1.1)
        assert client.get("/v1/instances", headers=headers).status_code == 200
    svc.close()


def test_request_size_is_limited(world):
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['mark']}", "X-Gureum-Project": "team-a",
               "content-type": "application/json"}  # fmt: skip
    resp = client.post("/v1/instances", content=b"x" * (2 * 1024 * 1024), headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload-too-large"


def test_audit_records_state_changes(world):
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['ada']}", "X-Gureum-Project": "team-a"}
    client.post("/v1/secgroups", json={"name": "audited"}, headers=headers)
    rows = client.get("/v1/audit", params={"project": "team-a"}, headers=headers).json()
    entry = next(r for r in rows if r["action"] == "POST /v1/secgroups" and r["result"] == 201)
    assert entry["user"] == "ada" and entry["project"] == "team-a"
    # Members are not admins: the audit is not theirs to read.
    member = {"Authorization": f"Bearer {tokens['mark']}", "X-Gureum-Project": "team-a"}
    assert client.get("/v1/audit", headers=member).status_code == 403
    # No secret ever lands in the audit log.
    assert "gur_" not in str(client.get("/v1/audit", headers=headers).json())


def test_project_admins_tighten_quotas_never_loosen(world):
    """The host's administrator grants; a project admin may lower what was granted (their own
    team's limit) but never raise it, which would take from the other tenants."""
    client, tokens = world
    headers = {"Authorization": f"Bearer {tokens['ada']}"}
    url = "/v1/projects/team-a/quotas"
    svc = client.app.state.services
    project = svc.tenancy.store.project("team-a")
    svc.tenancy.store.update_project(project.id, max_instances=8, cpu_limit=2.0)
    try:
        assert client.patch(url, json={"max_instances": 5}, headers=headers).status_code == 200
        for loosen in ({"max_instances": 6}, {"max_instances": None}, {"cpu_limit": 4.0}):
            resp = client.patch(url, json=loosen, headers=headers)
            assert resp.status_code == 403, loosen
            assert "administrator" in resp.json()["error"]["message"]
        assert client.get("/v1/projects/team-a", headers=headers).json()["quotas"][
            "max_instances"] == 5  # fmt: skip
    finally:
        svc.tenancy.store.update_project(project.id, max_instances=None, cpu_limit=None)


def test_whoami_says_who_and_where(world):
    client, tokens = world
    me = client.get("/v1/whoami", headers={"Authorization": f"Bearer {tokens['mark']}"}).json()
    assert me["user"] == "mark" and not me["superuser"] and me["token_name"] == "test"
    assert me["projects"] == [{"project": "team-a", "role": "member"}]  # not team-b's
    bob = client.get("/v1/whoami", headers={"Authorization": f"Bearer {tokens['bob']}"}).json()
    assert bob["projects"] == [{"project": "team-b", "role": "admin"}]


def test_a_store_that_goes_away_is_unavailable_not_an_error(tmp_path):
    """PostgreSQL stopped under a running service: every call answers 503 `unavailable` with
    Retry-After (authentication included, which is where a request meets the store first),
    no detail of where the store lives; once it is back the same service answers again."""
    from tests.postgres import PostgresServer

    pg = PostgresServer()
    pg.start()
    try:
        env = {"GUREUM_RATE_LIMIT": "0", "GUREUM_DATABASE_URL": pg.new_database()}
        svc = Services.build(load_config(tmp_path, env=env))
        svc.tenancy.ensure_default()
        svc.tenancy.create_user("una")
        svc.tenancy.store.set_role("p-default", svc.tenancy.store.user("una").id, Role.MEMBER)
        headers = {"Authorization": f"Bearer {svc.tenancy.create_token(SUPERUSER, 'una', 't')[1]}"}
        with TestClient(create_app(svc, "tcp"), raise_server_exceptions=False) as client:
            assert client.get("/v1/instances", headers=headers).status_code == 200
            pg.pause()
            for path in ("/v1/version", "/v1/instances"):
                resp = client.get(path, headers=headers)
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"]["code"] == "unavailable"
                assert resp.headers["retry-after"] == "5"
                assert str(pg.folder) not in resp.text
            pg.resume()
            assert client.get("/v1/instances", headers=headers).status_code == 200
        svc.close()
    finally:
        pg.stop()


def test_tokens_expire(world):
    """A token made with a lifetime works until then and is refused after, at once; a
    lifetime out of range is refused when the token is made."""
    client, tokens = world
    mark = {"Authorization": f"Bearer {tokens['mark']}"}
    resp = client.post("/v1/tokens", json={"name": "ci", "expires_in_s": 3600}, headers=mark)
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert 3590 < made["expires_at"] - time.time() <= 3600
    short = {"Authorization": f"Bearer {made['token']}", "X-Gureum-Project": "team-a"}
    assert client.get("/v1/instances", headers=short).status_code == 200
    store = client.app.state.services.tenancy.store
    from sqlalchemy import update

    from gureum.store.schema import tokens as table

    with store.db.begin() as conn:  # its hour is up
        conn.execute(update(table).where(table.c.id == made["id"]).values(expires_at=time.time()))
    resp = client.get("/v1/instances", headers=short)
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    listed = client.get("/v1/tokens", headers=mark).json()
    assert next(t for t in listed if t["id"] == made["id"])["expires_at"] <= time.time()
    assert next(t for t in listed if t["name"] == "test")["expires_at"] is None  # never
    for bad in (0, -5, 11 * 365 * 86400):
        resp = client.post("/v1/tokens", json={"name": "x", "expires_in_s": bad}, headers=mark)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid-input", bad


def test_held_allocations_count_until_released(world):
    """What is being made (a snapshot under way, a backup being imported) counts against the
    quota before its row exists, and stops counting once released (twice is harmless)."""
    client, _ = world
    svc = client.app.state.services
    project = svc.tenancy.store.project("team-a")
    other = svc.tenancy.store.project("team-b")
    svc.tenancy.store.update_project(project.id, max_snapshots=2, max_cpus=4)
    try:
        svc.quotas.check(project.id, snapshots=2, cpus=4)
        release = svc.quotas.hold(project.id, snapshots=1, cpus=3)
        elsewhere = svc.quotas.hold(other.id, snapshots=5, cpus=50)  # not team-a's
        svc.quotas.check(project.id, snapshots=1, cpus=1)
        for over in ({"snapshots": 2}, {"cpus": 2}):
            with pytest.raises(QuotaExceeded):
                svc.quotas.check(project.id, **over)
        release()
        release()
        elsewhere()
        svc.quotas.check(project.id, snapshots=2, cpus=4)
    finally:
        svc.tenancy.store.update_project(project.id, max_snapshots=None, max_cpus=None)


def test_resizes_under_way_count_against_the_quota(tmp_path):
    """Two resizes admitted back to back, before either operation has run (nothing yields
    between them): the second sees the first's growth and is refused. Stopped VMs: the
    operations only write the new size, so they finish here without a host."""
    import asyncio

    from gureum.model.hardware import Hardware
    from gureum.model.instance import Instance, InstanceSpec, State

    svc = Services.build(load_config(tmp_path, env={"GUREUM_RATE_LIMIT": "0"}))
    try:
        svc.tenancy.ensure_default()
        for i in (1, 2):
            spec = InstanceSpec(f"r{i}", "tiny", 1, 256, 1 << 30)
            inst = Instance(f"i-00000000000{i}", spec, State.STOPPED, time.time(), "v1")
            inst.hardware = Hardware.for_boot(1, 256)
            svc.instances.store.insert(inst)
        svc.tenancy.store.update_project("p-default", max_cpus=4)

        async def finish(op_id: str):  # type: ignore[no-untyped-def]
            op = await svc.ops.wait(op_id, timeout=30)
            while not op.done:
                op = await svc.ops.wait(op_id, timeout=30, progress_after=len(op.progress))
            return op

        async def both() -> tuple[object, object]:
            first = await svc.resize.resize("r1", cpus=3, project_id="p-default")
            try:
                await svc.resize.resize("r2", cpus=3, project_id="p-default")
                second: object = None
            except QuotaExceeded as exc:
                second = exc
            done = await finish(first.id)
            # Released: the first has its size, and one more vCPU is all that is left.
            await finish((await svc.resize.resize("r2", cpus=1, project_id="p-default")).id)
            with pytest.raises(QuotaExceeded):
                await svc.resize.resize("r2", cpus=2, project_id="p-default")
            return done, second

        done, second = asyncio.run(both())
        assert isinstance(second, QuotaExceeded) and "vCPUs" in second.message
        assert done.status.value == "succeeded"  # type: ignore[attr-defined]
        assert svc.instances.store.allocated("p-default")["cpus"] == 4
    finally:
        svc.close()
