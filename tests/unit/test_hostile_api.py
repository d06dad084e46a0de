"""A hostile tenant at the API (issue 9): each test is one finding, reproduced as the attacker
did it, and stays here as part of the attack corpus.

In-process, on a real service and store; nothing boots a VM. ``tcp`` is the app as remote users
see it (a token on every call); ``root`` is the local socket's (the host's administrator).
"""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.errors import QuotaExceeded
from gureum.model.tenancy import Role
from gureum.service import tenancy
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


# -- #6: tokens minted by tokens, per-user rate, how many tokens a user may hold ------------------
def test_a_token_minted_by_a_short_lived_token_does_not_outlive_it(world):
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    t = world.svc.tenancy
    parent, secret = t.create_token(SUPERUSER, "mark", "short", expires_in_s=3600)
    who = {"Authorization": f"Bearer {secret}"}
    # Asked for nothing: it ends with its parent, not never.
    child = world.tcp.post("/v1/tokens", json={"name": "child"}, headers=who).json()
    assert child["expires_at"] == parent.expires_at
    # Asked for longer than the parent has left: refused, nothing made.
    before = len(t.tokens(t.authenticate(secret)))
    resp = world.tcp.post("/v1/tokens", json={"name": "longer", "expires_in_s": 7200}, headers=who)
    assert "outlive" in error_of(resp, 400, "invalid-input")
    assert len(t.tokens(t.authenticate(secret))) == before
    # Shorter is fine.
    shorter = world.tcp.post(
        "/v1/tokens", json={"name": "shorter", "expires_in_s": 600}, headers=who
    ).json()
    assert shorter["expires_at"] < parent.expires_at
    # A token that never expires mints what it is asked for.
    lasting = world.tcp.post(
        "/v1/tokens", json={"name": "lasting"}, headers=world.as_("mark")
    ).json()
    assert lasting["expires_at"] is None


def test_many_tokens_of_one_user_share_one_rate(tmp_path):
    env = {
        "GUREUM_RATE_LIMIT": "2",
        "GUREUM_RATE_BURST": "3",
        "GUREUM_USER_RATE_LIMIT": "2",
        "GUREUM_USER_RATE_BURST": "4",
    }
    svc = Services.build(load_config(tmp_path, env=env))
    svc.tenancy.ensure_default()
    svc.tenancy.store.set_role("p-default", svc.tenancy.create_user("rita").id, Role.VIEWER)
    svc.tenancy.store.set_role("p-default", svc.tenancy.create_user("sam").id, Role.VIEWER)
    secrets = [svc.tenancy.create_token(SUPERUSER, "rita", f"t{i}")[1] for i in range(5)]
    other = svc.tenancy.create_token(SUPERUSER, "sam", "t")[1]
    with TestClient(create_app(svc, "tcp")) as client:
        codes = [
            client.get("/v1/instances", headers={"Authorization": f"Bearer {s}"}).status_code
            for s in secrets
            for _ in range(2)
        ]
        assert codes.count(200) == 4 and set(codes[4:]) == {429}, codes
        # Another user's budget is their own.
        resp = client.get("/v1/instances", headers={"Authorization": f"Bearer {other}"})
        assert resp.status_code == 200
    svc.close()


def test_a_user_holds_a_bounded_number_of_live_tokens(tmp_path, monkeypatch):
    svc = Services.build(load_config(tmp_path, env={"GUREUM_MAX_TOKENS_PER_USER": "3"}))
    t = svc.tenancy
    t.ensure_default()
    t.store.set_role("p-default", t.create_user("mark").id, Role.MEMBER)
    first, secret = t.create_token(SUPERUSER, "mark", "a")
    t.create_token(SUPERUSER, "mark", "b")
    # Long enough to hold while the client starts on a loaded machine (1 s once did not).
    t.create_token(SUPERUSER, "mark", "c", expires_in_s=60)
    with TestClient(create_app(svc, "tcp")) as client:
        who = {"Authorization": f"Bearer {secret}"}
        resp = client.post("/v1/tokens", json={"name": "d"}, headers=who)
        assert "max_tokens_per_user" in error_of(resp, 409, "quota-exceeded")
        assert len(t.tokens(SUPERUSER)) == 3
    with pytest.raises(QuotaExceeded):  # the administrator minting for them too
        t.create_token(SUPERUSER, "mark", "d")
    t.revoke(SUPERUSER, first.id)  # revoked ones do not count
    t.create_token(SUPERUSER, "mark", "d")
    later = time.time() + 61  # nor do expired ones: the service's clock a minute on
    monkeypatch.setattr(tenancy, "time", SimpleNamespace(time=lambda: later))
    t.create_token(SUPERUSER, "mark", "e")
    with pytest.raises(QuotaExceeded):
        t.create_token(SUPERUSER, "mark", "f")
    svc.close()


# -- #7: names with a trailing newline; users named like the service's own callers --------------
@pytest.mark.parametrize("bad", ["a1\n", "a1\r\n", "\na1", "a1\n\n", "a\n1"])
def test_a_name_is_matched_whole(bad):
    from gureum.errors import InvalidInput
    from gureum.ids import check_name

    with pytest.raises(InvalidInput, match="invalid"):
        check_name(bad)


def test_no_name_with_a_newline_gets_in_through_the_api(world):
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    who = world.as_("mark", "team-a")
    calls = [
        ("/v1/secgroups", {"name": "web\n"}),
        ("/v1/networks", {"name": "back\n", "subnet": "10.80.1.0/24"}),
        ("/v1/tokens", {"name": "laptop\n"}),
        ("/v1/instances", {"name": "web1\n", "image": "tiny"}),
    ]
    for url, body in calls:
        error_of(world.tcp.post(url, json=body, headers=who), 400, "invalid-input")
    error_of(world.root.post("/v1/users", json={"name": "eve\n"}), 400, "invalid-input")
    error_of(world.root.post("/v1/projects", json={"name": "team-b\n"}), 400, "invalid-input")
    assert world.svc.secgroups.list() == [] and world.svc.networks.list() == []


@pytest.mark.parametrize("name", ["root", "anonymous"])
def test_users_cannot_be_named_like_the_services_own_callers(world, name):
    """root is the host's administrator in lists and the audit, anonymous an unauthenticated
    caller: a user by either name would pass for them."""
    resp = world.root.post("/v1/users", json={"name": name})
    assert "reserved" in error_of(resp, 400, "invalid-input")
    assert world.svc.tenancy.store.user(name) is None


def test_users_cannot_be_named_like_a_user_id(world):
    """Users are found by id or name: a name shaped like another user's id would shadow it."""
    victim = world.svc.tenancy.create_user("victim")
    error_of(world.root.post("/v1/users", json={"name": victim.id}), 400, "invalid-input")
    assert world.svc.tenancy.user(victim.id).name == "victim"


# -- low: a chunked body past the limit; 401s in the audit ---------------------------------------
def test_a_chunked_body_past_the_limit_is_413(world):
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")

    def chunks():
        for _ in range(32):
            yield b"x" * (64 * 1024)  # 2 MiB in all, never announced

    headers = {**world.as_("mark", "team-a"), "content-type": "application/json"}
    resp = world.tcp.post("/v1/instances", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    error_of(resp, 413, "payload-too-large")
    audited = world.svc.tenancy.store.audit(action="POST /v1/instances")
    assert [a["result"] for a in audited] == [413]


def test_unauthenticated_calls_are_audited_without_their_secret(world):
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    forged = "gur_" + "A" * 43
    assert (
        world.tcp.get("/v1/instances", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )
    assert world.tcp.post("/v1/secgroups", json={"name": "x"}).status_code == 401
    t = world.svc.tenancy
    secret = t.create_token(SUPERUSER, "mark", "old", expires_in_s=1)[1]
    time.sleep(1.05)
    assert (
        world.tcp.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 401
    )
    rows = [r for r in t.store.audit() if r["result"] == 401]
    assert {r["action"] for r in rows} == {
        "GET /v1/instances",
        "POST /v1/secgroups",
        "GET /v1/whoami",
    }
    assert all(r["user"] == "anonymous" and r["detail"]["reason"] for r in rows)
    assert "expired" in next(r for r in rows if r["action"] == "GET /v1/whoami")["detail"]["reason"]
    text = str(t.store.audit())
    assert forged not in text and secret not in text and "gur_" not in text


# -- low: what the host and images say to tenants ------------------------------------------------
def _put_instance(svc, name, project_id, cpus, memory_mib):
    from gureum.model.instance import Instance, InstanceSpec, State
    from gureum.store.instances import InstanceStore

    spec = InstanceSpec(name, "tiny", cpus, memory_mib, 2 << 30)
    inst = Instance(f"i-{os.urandom(6).hex()}", spec, State.RUNNING, time.time(), "v1")
    inst.project_id = project_id
    InstanceStore(svc.db).insert(inst)


def test_the_host_view_is_the_administrators(world):
    a = world.svc.tenancy.create_project("team-a", {})
    b = world.svc.tenancy.create_project("team-b", {})
    world.person("mark", "team-a")
    _put_instance(world.svc, "mine", a.id, 1, 256)
    _put_instance(world.svc, "theirs", b.id, 3, 2048)
    full = world.root.get("/v1/host").json()
    assert full["view"] == "host" and full["instances"] == 2
    assert full["committed"] == {"cpus": 4, "memory_mib": 2304}
    assert full["capacity"]["memory_mib"] > 0
    mine = world.tcp.get("/v1/host", headers=world.as_("mark")).json()
    assert mine["view"] == "projects" and mine["instances"] == 1
    assert mine["committed"] == {"cpus": 1, "memory_mib": 256}
    assert mine["capacity"] == {}  # the host's size and reserve are the operator's business
    assert mine["accel"] == full["accel"]


def test_images_show_no_host_paths_to_tenants(world):
    from gureum.model.image import Image
    from gureum.store.images import ImageStore

    home = str(world.svc.config.home)
    ImageStore(world.svc.db).put(
        Image("tiny", "v1", "6.1", f"{home}/images/tiny/v1", {}, {}, 512 << 20, time.time())
    )
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    for url in ("/v1/images", "/v1/images/tiny"):
        resp = world.tcp.get(url, headers=world.as_("mark"))
        assert resp.status_code == 200 and home not in resp.text, resp.text
    assert world.tcp.get("/v1/images/tiny", headers=world.as_("mark")).json()["path"] is None
    assert world.root.get("/v1/images/tiny").json()["path"] == f"{home}/images/tiny/v1"


# -- low: which user names exist, through member add and remove -----------------------------------
def test_a_project_admin_cannot_learn_which_users_exist(world):
    t = world.svc.tenancy
    for project in ("team-a", "team-b", "team-c"):
        t.create_project(project, {})
    world.person("ada", "team-a", Role.ADMIN)
    t.store.set_role(t.store.project("team-b").id, t.store.user("ada").id, Role.VIEWER)
    world.person("bob", "team-b")  # shares team-b with ada: she sees him in its members
    world.person("carol", "team-c")  # shares nothing with ada
    who = world.as_("ada")

    def put(user):
        return world.tcp.put(f"/v1/projects/team-a/members/{user}", json={"role": "viewer"},
                             headers=who)  # fmt: skip

    def delete(user):
        return world.tcp.delete(f"/v1/projects/team-a/members/{user}", headers=who)

    for call in (put, delete):
        hidden = error_of(call("carol"), 404, "not-found")
        missing = error_of(call("ghost"), 404, "not-found")
        assert hidden.replace("carol", "X") == missing.replace("ghost", "X")
    assert "carol" not in str(world.root.get("/v1/projects/team-a/members").json())
    # Someone she already sees, she may add; the administrator may add anyone.
    assert {"user": "bob", "role": "viewer"} in put("bob").json()
    resp = world.root.put("/v1/projects/team-a/members/carol", json={"role": "viewer"})
    assert {"user": "carol", "role": "viewer"} in resp.json()


# -- low: the console log is what the guest printed: members only --------------------------------
def test_a_viewer_cannot_read_the_console_log(world):
    a = world.svc.tenancy.create_project("team-a", {})
    world.person("vera", "team-a", Role.VIEWER)
    world.person("mark", "team-a", Role.MEMBER)
    _put_instance(world.svc, "web1", a.id, 1, 256)
    url = "/v1/instances/web1/console/log"
    error_of(world.tcp.get(url, headers=world.as_("vera", "team-a")), 403, "forbidden")
    assert world.tcp.get(url, headers=world.as_("mark", "team-a")).status_code == 200
    # Reading the instance itself stays a viewer's.
    assert (
        world.tcp.get("/v1/instances/web1", headers=world.as_("vera", "team-a")).status_code == 200
    )


# -- low: strict types in request bodies ---------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/instances", {"name": "w", "image": "tiny", "cpus": True}),
        ("/v1/instances", {"name": "w", "image": "tiny", "memory_mib": "512"}),
        ("/v1/instances", {"name": "w", "image": "tiny", "disk_gib": False}),
        ("/v1/instances/ghost/exec", {"command": ["true"], "timeout_s": True}),
        ("/v1/instances/ghost/snapshots", {"name": "s", "memory": 1}),
        ("/v1/instances/ghost/resize", {"cpus": 2.0}),
        ("/v1/tokens", {"name": "t", "expires_in_s": True}),
        ("/v1/tokens", {"name": "t", "expires_in_s": "3600"}),
    ],
)
def test_request_numbers_and_booleans_are_what_they_say(world, url, body):
    """JSON true is not 1, "512" is not 512, 2.0 is not a count of CPUs."""
    world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    resp = world.tcp.post(url, json=body, headers=world.as_("mark", "team-a"))
    error_of(resp, 400, "invalid-input")
    assert len(world.svc.tenancy.tokens(SUPERUSER)) == 1  # mark's own, nothing new


@pytest.mark.parametrize(
    "body",
    [
        {"max_instances": "3"},
        {"max_cpus": 2.0},
        {"cpu_limit": True},
        {"max_networks": []},
        {"max_disk_bytes": 10**30},  # past what the store holds: was a 500
        {"memory_limit_mib": 2**60},  # past what a control group takes, in bytes
    ],
)
def test_quota_numbers_are_numbers(world, body):
    world.svc.tenancy.create_project("team-a", {})
    error_of(world.root.patch("/v1/projects/team-a/quotas", json=body), 400, "invalid-input")
    error_of(world.root.post("/v1/projects", json={"name": "b", **body}), 400, "invalid-input")
    assert world.svc.tenancy.store.project("team-a").quotas() == dict.fromkeys(
        world.svc.tenancy.store.project("team-a").quotas()
    )


# -- low: a security group whose rule names itself ------------------------------------------------
def test_a_group_naming_itself_can_be_deleted(world):
    project = world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    who = world.as_("mark", "team-a")
    for name in ("web", "db"):
        assert world.tcp.post("/v1/secgroups", json={"name": name}, headers=who).status_code == 201
    rule = {"ingress": "tcp/80", "from_group": "web"}
    assert world.tcp.post("/v1/secgroups/web/rules", json=rule, headers=who).status_code == 201
    assert world.tcp.post("/v1/secgroups/db/rules", json=rule, headers=who).status_code == 201
    # Named by another group: still refused, that group's rule would point nowhere.
    error_of(world.tcp.delete("/v1/secgroups/web", headers=who), 409, "conflict")
    db = world.svc.secgroups.get("db", project.id)
    world.tcp.delete(f"/v1/secgroups/db/rules/{db.rules[0].id}", headers=who)
    # Named only by its own rule: deleted with it.
    assert world.tcp.delete("/v1/secgroups/web", headers=who).status_code == 200
    assert [g.name for g in world.svc.secgroups.list()] == ["db"]


# -- low: port forwards: privileged host ports, and how many -------------------------------------
def _forward(svc, instance_ref, project_id, port):
    from gureum.model.network import Forward

    inst = svc.instances.get(instance_ref, project_id)
    fwd = Forward(f"f-{os.urandom(6).hex()}", inst.id, "127.0.0.1", port, 80, time.time())
    svc.forwards.store.add_forward(fwd)


def test_forwards_refuse_privileged_host_ports(world):
    a = world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    _put_instance(world.svc, "web1", a.id, 1, 256)
    url, who = "/v1/instances/web1/forwards", world.as_("mark", "team-a")
    for mapping in ("80:80", "127.0.0.2:22:22", "1023:80"):
        resp = world.tcp.post(url, json={"mapping": mapping}, headers=who)
        assert "1024" in error_of(resp, 400, "invalid-input")
    # 1024 and up pass that check (and fail later here: the VM has no NIC to forward to).
    error_of(world.tcp.post(url, json={"mapping": "1024:80"}, headers=who), 409, "invalid-state")
    assert world.svc.forwards.list() == []


def test_the_administrator_may_allow_privileged_forwards(tmp_path):
    svc = Services.build(load_config(tmp_path, env={"GUREUM_FORWARD_MIN_PORT": "1"}))
    svc.tenancy.ensure_default()
    _put_instance(svc, "web1", "p-default", 1, 256)
    with TestClient(create_app(svc)) as root:
        resp = root.post("/v1/instances/web1/forwards", json={"mapping": "80:80"})
        error_of(resp, 409, "invalid-state")  # past the port check: no NIC
    svc.close()


def test_forwards_are_bounded_by_a_project_quota(world):
    a = world.svc.tenancy.create_project("team-a", {})
    world.person("mark", "team-a")
    world.person("ada", "team-a", Role.ADMIN)
    _put_instance(world.svc, "web1", a.id, 1, 256)
    _put_instance(world.svc, "web2", a.id, 1, 256)
    _forward(world.svc, "web1", a.id, 8080)
    _forward(world.svc, "web2", a.id, 8081)
    resp = world.root.patch("/v1/projects/team-a/quotas", json={"max_forwards": 2})
    assert resp.status_code == 200 and resp.json()["quotas"]["max_forwards"] == 2
    usage = world.tcp.get("/v1/projects/team-a/usage", headers=world.as_("mark")).json()
    assert usage["allocated"]["forwards"] == 2
    resp = world.tcp.post(
        "/v1/instances/web2/forwards",
        json={"mapping": "8082:80"},
        headers=world.as_("mark", "team-a"),
    )
    assert "forwards" in error_of(resp, 409, "quota-exceeded")
    # Like every quota: the project's admin may lower it, not raise it.
    url, ada = "/v1/projects/team-a/quotas", world.as_("ada")
    error_of(world.tcp.patch(url, json={"max_forwards": 3}, headers=ada), 403, "forbidden")
    assert world.tcp.patch(url, json={"max_forwards": 1}, headers=ada).status_code == 200
