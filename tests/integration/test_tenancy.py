"""Many users on one host, for real: a service on PostgreSQL serving HTTPS on loopback, projects
with quotas and CPU limits, users with roles and tokens, remotes with pinned certificates.

Everything here goes through the TCP listener with tokens, as a remote user would, except the
superuser's own setup, which uses the local socket (root, no token) like an operator would.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from gureum.api.tls import ensure as make_certificate
from gureum.client.client import ApiError, Client, Endpoint
from tests.waiting import wait_for

from .conftest import running_service

pytestmark = pytest.mark.vm

DB_PASSWORD = "pw-kept-out-of-logs"
PEOPLE = {"alice": ("team-a", "admin"), "vic": ("team-a", "viewer"), "bob": ("team-b", "admin")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cloud:
    def __init__(self, svc, url: str) -> None:  # type: ignore[no-untyped-def]
        self.svc = svc
        self.url = url
        self.cert = (svc.home / "tls" / "cert.pem").read_text()
        self.tokens: dict[str, str] = {}

    def client(self, user: str, project: str | None = None, token: str | None = None) -> Client:
        return Client(Endpoint(self.url, None, token or self.tokens[user], project, self.cert))

    def remote_cli(self, config: Path, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        """The CLI of a user on another machine: no home, only their remotes file."""
        import subprocess

        env = {k: v for k, v in os.environ.items() if not k.startswith("GUREUM_")}
        env["GUREUM_CONFIG"] = str(config)
        proc = subprocess.run(
            [sys.executable, "-m", "gureum.cli.main", *args],
            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture(scope="module")
def cloud(postgres):
    port = _free_port()
    # The server trusts its socket and ignores the password; it is there to be kept out of logs.
    url = postgres.new_database().replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    env = {"GUREUM_DATABASE_URL": url, "GUREUM_LISTEN": f"127.0.0.1:{port}"}
    with running_service(env) as svc:
        c = Cloud(svc, f"https://127.0.0.1:{port}")
        svc.cli("project", "create", "team-a", "--max-instances", "3", "--max-cpus", "8")
        svc.cli("project", "create", "team-b")
        for user, (project, role) in PEOPLE.items():
            svc.cli("user", "create", user)
            svc.cli("project", "member", "add", project, user, "--role", role)
            out = svc.cli("token", "create", "--user", user, "--name", "laptop", "-o", "json")
            c.tokens[user] = json.loads(out.stdout)["token"]
        yield c
        for project in ("team-a", "team-b"):
            with c.client("alice" if project == "team-a" else "bob", project) as client:
                for inst in client.instances():
                    client.delete(inst["id"], force=True)


@pytest.fixture(scope="module")
def a1(cloud):
    """One running VM of team-a, launched by alice over HTTPS with her token."""
    with cloud.client("alice", "team-a") as c:
        res = c.launch("a1", "tiny", cpus=2)
        inst = c.wait(res["operation"]["id"], timeout=240)["result"]["instance"]
    assert inst["state"] == "running"
    return inst


def test_the_store_is_postgresql(cloud):
    assert json.loads(cloud.svc.cli("host", "-o", "json").stdout)["store"] == "postgresql"


def test_every_call_needs_a_valid_token(cloud):
    with cloud.client("alice", token="gur_not-a-real-token") as c, pytest.raises(ApiError) as e:
        c.instances()
    assert (e.value.status, e.value.code) == (401, "unauthenticated")
    anonymous = Client(Endpoint(cloud.url, None, None, None, cloud.cert))
    with anonymous as c, pytest.raises(ApiError) as e:
        c.request("GET", "/v1/version")
    assert e.value.status == 401


def test_remote_pins_the_certificate(cloud, tmp_path):
    config = tmp_path / "remotes.json"
    token = cloud.tokens["alice"]
    wrong = "AA:" * 31 + "AA"
    bad = cloud.remote_cli(config, "remote", "add", "home", cloud.url, "--token", token,
                           "--fingerprint", wrong, check=False)  # fmt: skip
    assert bad.returncode != 0 and "not added" in bad.stderr
    assert not config.exists() or "home" not in json.loads(config.read_text())["remotes"]

    fingerprint = make_certificate(cloud.svc.home / "tls")[2]
    out = cloud.remote_cli(config, "remote", "add", "home", cloud.url, "--token", token,
                           "--fingerprint", fingerprint)  # fmt: skip
    assert fingerprint in out.stdout.replace("\n", "")
    assert config.stat().st_mode & 0o077 == 0  # it holds a token: the user's eyes only
    listed = cloud.remote_cli(config, "--project", "team-a", "list", "-o", "json")
    assert isinstance(json.loads(listed.stdout), list)
    me = cloud.remote_cli(config, "whoami").stdout
    assert "alice, token laptop" in me and cloud.url in me and "team-a (admin)" in me

    # A different server at the same address (another certificate) is refused, not trusted.
    data = json.loads(config.read_text())
    data["remotes"]["home"]["cert"] = make_certificate(tmp_path / "impostor")[0].read_text()
    config.write_text(json.dumps(data))
    refused = cloud.remote_cli(config, "--project", "team-a", "list", check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower()


def _all_at_once(cloud, n, call):  # type: ignore[no-untyped-def]
    """``call(client, i)`` from n threads at once, each alice's own HTTPS connection in team-a:
    the answers admitted, and the errors refused."""
    results: list[object] = [None] * n

    def one(i: int) -> None:
        with cloud.client("alice", "team-a") as c:
            try:
                results[i] = call(c, i)
            except ApiError as exc:
                results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = [r for r in results if isinstance(r, dict)]
    return admitted, [r for r in results if isinstance(r, ApiError)]


def test_concurrent_launches_never_overshoot_the_quota(cloud):
    """Twenty launches at once against max-instances 3: exactly three are admitted."""
    admitted, refused = _all_at_once(cloud, 20, lambda c, i: c.launch(f"race{i}", "tiny"))
    assert len(admitted) == 3, refused
    assert len(refused) == 17 and {(e.status, e.code) for e in refused} == {(409, "quota-exceeded")}
    with cloud.client("alice", "team-a") as c:
        for res in admitted:
            c.wait(res["operation"]["id"], timeout=240)  # type: ignore[index]
        assert len(c.instances()) == 3
        usage = c.request("GET", "/v1/projects/team-a/usage")
        assert usage["allocated"]["instances"] == 3
        # Full: one more is refused with a message that says which quota.
        with pytest.raises(ApiError) as e:
            c.launch("one-more", "tiny")
        assert e.value.code == "quota-exceeded" and "instances" in e.value.message
        for inst in c.instances():
            c.delete(inst["id"], force=True)
        assert c.instances() == []


def test_concurrent_snapshots_never_overshoot_the_quota(cloud, a1):
    """Snapshots are taken by operations that add their row at the end: the quota must count
    the ones under way, or six at once would all pass a check made before any exists."""
    cloud.svc.cli("project", "quota", "team-a", "--max-snapshots", "2")
    try:
        admitted, refused = _all_at_once(cloud, 6, lambda c, i: c.snapshot("a1", f"race{i}"))
        assert len(admitted) == 2, refused
        assert {(e.status, e.code) for e in refused} == {(409, "quota-exceeded")}
        with cloud.client("alice", "team-a") as c:
            for op in admitted:
                c.wait(op["id"], timeout=120)  # type: ignore[index]
            assert len(c.snapshots("a1")) == 2
            # The holds were released: with one deleted, exactly one more fits.
            c.delete_snapshot("a1", c.snapshots("a1")[0]["name"])
            c.wait(c.snapshot("a1", "after")["id"], timeout=120)
            with pytest.raises(ApiError) as e:
                c.snapshot("a1", "over")
            assert e.value.code == "quota-exceeded"
            for s in c.snapshots("a1"):
                c.delete_snapshot("a1", s["name"])
    finally:
        cloud.svc.cli("project", "quota", "team-a", "--unset", "max-snapshots")


def test_roles_and_projects(cloud, a1):
    with cloud.client("vic", "team-a") as c:  # viewer: sees, cannot change
        assert [i["name"] for i in c.instances()] == ["a1"]
        for call in (lambda: c.exec("a1", ["true"]), lambda: c.delete("a1", force=True)):
            with pytest.raises(ApiError) as e:
                call()
            assert (e.value.status, e.value.code) == (403, "forbidden")
    with cloud.client("bob", "team-b") as c:  # another project: a1 does not exist for bob
        assert c.instances() == []
        with pytest.raises(ApiError) as e:
            c.instance("a1")
        assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            c.request("GET", f"/v1/instances/{a1['id']}")
        assert e.value.status == 404
    with cloud.client("bob", "team-a") as c:  # not a member of team-a: same answer as no project
        with pytest.raises(ApiError) as e:
            c.instances()
        assert e.value.status == 404
    with cloud.client("alice", "team-a") as c:
        assert c.exec("a1", ["hostname"])["stdout"].decode().strip() == "a1"


def _cores_used(c: Client, seconds: float) -> float:
    def cpu() -> float:
        return c.request("GET", "/v1/projects/team-a/usage")["used"]["cpu_seconds"]

    before, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    return (cpu() - before) / (time.monotonic() - t0)


def test_cpu_limit_bites(cloud, a1):
    """Two vCPUs spinning in the guest: the project's cgroup holds them to the limit set."""
    with cloud.client("alice", "team-a") as c:
        spin = "for i in 1 2; do (while :; do :; done) >/dev/null 2>&1 & done"
        assert c.exec("a1", ["sh", "-c", spin])["exit_code"] == 0
        try:
            cloud.svc.cli("project", "quota", "team-a", "--cpu-limit", "2")
            free = _cores_used(c, 6)
            cloud.svc.cli("project", "quota", "team-a", "--cpu-limit", "0.5")
            # Measured once the limit is seen to bite (the periods begun before it ran free).
            wait_for(lambda: _cores_used(c, 1) < 0.6, 15, interval=0, what="the limit in force")
            limited = _cores_used(c, 6)
        finally:
            cloud.svc.cli("project", "quota", "team-a", "--cpu-limit", "2")
            c.exec("a1", ["sh", "-c", "kill $(pgrep -x sh | grep -v $$) 2>/dev/null; true"])
    print(f"cores used: {free:.2f} at limit 2, {limited:.2f} at limit 0.5")
    assert free > 1.0
    assert limited < 0.6


def test_revoked_token_is_refused_at_once(cloud):
    made = json.loads(
        cloud.svc.cli("token", "create", "--user", "alice", "--name", "ci", "-o", "json").stdout
    )
    with cloud.client("alice", "team-a", token=made["token"]) as c:
        c.instances()
        cloud.svc.cli("token", "revoke", made["id"])
        with pytest.raises(ApiError) as e:
            c.instances()
        assert (e.value.status, e.value.code) == (401, "unauthenticated")


def test_token_lifetime_from_the_cli(cloud):
    made = json.loads(cloud.svc.cli("token", "create", "--user", "vic", "--name", "day",
                                    "--expires", "1d", "-o", "json").stdout)  # fmt: skip
    assert 86390 < made["expires_at"] - time.time() <= 86400
    listed = cloud.svc.cli("token", "list").stdout
    assert any(made["id"] in line and "in 23h" in line for line in listed.splitlines()), listed
    bad = cloud.svc.cli("token", "create", "--user", "vic", "--name", "x", "--expires", "1y",
                        check=False)  # fmt: skip
    # Refused by the CLI itself, before sending: a usage error (exit 2).
    assert bad.returncode == 2 and "[usage]" in bad.stderr and "duration" in bad.stderr
    cloud.svc.cli("token", "revoke", made["id"])


def test_audit_says_who_did_what(cloud, a1):
    with cloud.client("vic", "team-a") as c, pytest.raises(ApiError):
        c.delete("a1", force=True)
    rows = json.loads(cloud.svc.cli("audit", "list", "--project", "team-a", "-o", "json").stdout)
    seen = {(r["user"], r["action"], r["result"]) for r in rows}
    assert ("alice", "POST /v1/instances", 202) in seen
    assert ("vic", "DELETE /v1/instances/{ref}", 403) in seen
    assert all(r["project"] == "team-a" for r in rows)
    recent = cloud.svc.cli("audit", "list", "--project", "team-a", "--since", "1h", "-o", "json")
    assert {r["id"] for r in json.loads(recent.stdout)} >= {r["id"] for r in rows[:5]}
    bad = cloud.svc.cli("audit", "list", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "[usage]" in bad.stderr  # the CLI's own refusal


def test_no_secret_in_the_logs(cloud, a1):
    """Every token above was shown once and used over HTTPS many times; none of them, nor the
    store's password, is in what the service wrote or shows."""
    home = cloud.svc.home
    written = "".join(
        p.read_text(errors="replace") for p in (home / "serve.out", home / "service.log")
    )
    assert "certificate fingerprint" in written  # the service's own log, not an empty file
    for user, secret in cloud.tokens.items():
        assert secret not in written, user
    assert DB_PASSWORD not in written
    assert DB_PASSWORD not in cloud.svc.cli("host", "-o", "json").stdout
