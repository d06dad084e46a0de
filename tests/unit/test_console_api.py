"""The web console's server side: its files and their security headers, sign-in with a token or a
one-time code, the session cookie's attributes, CSRF on every change, same-origin WebSockets,
and a session that ends with its token (the pages themselves: tests/integration/test_console.py)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gureum.api import sessions
from gureum.api.app import create_app
from gureum.model.tenancy import Role
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakeworld import fake_services


@pytest.fixture
def world(tmp_path):
    """The unix (admin) and tcp apps sharing one set of sessions; alice, a member of default."""
    svc, _ = fake_services(tmp_path, ("tiny",))
    t = svc.tenancy
    alice = t.create_user("alice")
    t.store.set_role(t.scope(SUPERUSER, None).project.id, alice.id, Role.MEMBER)
    token, secret = t.create_token(SUPERUSER, "alice", "browser")
    shared = sessions.Sessions()
    with (
        TestClient(create_app(svc, "unix", shared)) as admin,
        TestClient(create_app(svc, "tcp", shared)) as tcp,
        TestClient(create_app(svc, "ui", shared), base_url="http://localhost:8123") as ui,
    ):
        tcp.ui = ui  # type: ignore[attr-defined]  # `gureum ui`'s socket, beside the TCP one
        yield svc, admin, tcp, secret, token
    svc.close()


def sign_in(tcp: TestClient, **body: str) -> tuple[dict[str, str], str]:
    """(the headers a page sends: its cookie and CSRF value, the Set-Cookie line)."""
    resp = tcp.post("/ui/session", json=body)
    assert resp.status_code == 201, resp.text
    set_cookie = resp.headers["set-cookie"]
    sid = set_cookie.split(";")[0].split("=", 1)[1]
    return {"Cookie": f"{sessions.COOKIE}={sid}", "X-CSRF-Token": resp.json()["csrf"]}, set_cookie


def test_the_files_answer_without_identity_with_a_content_security_policy(world):
    _, _, tcp, _, _ = world
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui/js/app.js", "text/javascript"),
        ("/ui/vendor/xterm.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ):
        resp = tcp.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-type"].startswith(kind)
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert resp.headers["x-frame-options"] == "DENY"
    # Only the console's own files: a path is looked up, never joined onto a folder.
    # (A client may resolve the dots itself: then the path is outside /ui/ and needs a token.)
    for path in (
        "/ui/../api/app.py",
        "/ui/%2e%2e/auth.py",
        "/ui/nothing.js",
        "/ui/js/../../app.py",
    ):
        assert tcp.get(path).status_code in (401, 404), path
    assert tcp.get("/ui", follow_redirects=False).headers["location"] == "/ui/"


def test_a_token_signs_in_and_the_cookie_is_httponly_secure_and_strict(world):
    _, _, tcp, secret, _ = world
    assert tcp.post("/ui/session", json={"token": "nope"}).status_code == 401
    assert tcp.post("/ui/session", json={}).status_code == 401
    page, set_cookie = sign_in(tcp, token=secret)
    attributes = {a.strip().lower() for a in set_cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
    who = tcp.get("/ui/session", headers={"Cookie": page["Cookie"]}).json()
    assert who["user"] == "alice" and who["csrf"] == page["X-CSRF-Token"]
    assert tcp.get("/v1/instances", headers={"Cookie": page["Cookie"]}).status_code == 200


def test_every_change_needs_the_sessions_csrf_value(world):
    svc, _, tcp, secret, _ = world
    page, _ = sign_in(tcp, token=secret)
    body = {"name": "web", "image": "tiny"}
    cookie_only = {"Cookie": page["Cookie"]}
    resp = tcp.post("/v1/instances", json=body, headers=cookie_only)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf"
    wrong = {**cookie_only, "X-CSRF-Token": "x" * 43}
    assert tcp.post("/v1/instances", json=body, headers=wrong).status_code == 403
    assert tcp.delete("/ui/session", headers=cookie_only).status_code == 403  # sign-out too
    assert svc.instances.list() == []  # nothing was made by the refused ones
    assert tcp.post("/v1/instances", json=body, headers=page).status_code == 202


def test_a_websocket_with_the_cookie_must_come_from_the_consoles_origin(world):
    _, _, tcp, secret, _ = world
    page, _ = sign_in(tcp, token=secret)
    foreign = {"Cookie": page["Cookie"], "Origin": "https://evil.example"}
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        tcp.websocket_connect("/v1/events", headers=foreign) as ws,
    ):
        ws.receive_json()
    assert refused.value.code == 4403
    own = {"Cookie": page["Cookie"], "Origin": "http://testserver"}
    with tcp.websocket_connect("/v1/events?project=default", headers=own) as ws:
        assert "stream" in ws.receive_json()


def test_revoking_the_token_ends_its_sessions(world):
    svc, _, tcp, secret, token = world
    page, _ = sign_in(tcp, token=secret)
    svc.tenancy.revoke(SUPERUSER, token.id)
    assert tcp.get("/v1/instances", headers={"Cookie": page["Cookie"]}).status_code == 401


def test_signing_out_ends_the_session(world):
    _, _, tcp, secret, _ = world
    page, _ = sign_in(tcp, token=secret)
    resp = tcp.delete("/ui/session", headers=page)
    assert resp.status_code == 200 and "max-age=0" in resp.headers["set-cookie"].lower()
    assert tcp.get("/v1/instances", headers={"Cookie": page["Cookie"]}).status_code == 401


def test_a_one_time_code_signs_in_once(world, monkeypatch):
    svc, admin, tcp, secret, token = world
    ui = tcp.ui
    code = admin.post("/v1/ui/codes").json()["code"]  # root on the local socket: `gureum ui`
    page, _ = sign_in(ui, code=code)
    assert ui.get("/ui/session", headers={"Cookie": page["Cookie"]}).json()["superuser"]
    assert ui.post("/ui/session", json={"code": code}).status_code == 401  # used
    # A user's code carries their token: the session is theirs, and ends with it.
    code = tcp.post("/v1/ui/codes", headers={"Authorization": f"Bearer {secret}"}).json()["code"]
    page, _ = sign_in(tcp, code=code)
    assert tcp.get("/ui/session", headers={"Cookie": page["Cookie"]}).json()["user"] == "alice"
    # A session cannot make codes (it would renew itself for ever); a code expires in a minute.
    assert tcp.post("/v1/ui/codes", headers=page).status_code == 403
    code = admin.post("/v1/ui/codes").json()["code"]
    later = time.monotonic() + sessions.CODE_S + 1
    monkeypatch.setattr(sessions.time, "monotonic", lambda: later)
    assert ui.post("/ui/session", json={"code": code}).status_code == 401
    monkeypatch.undo()
    # A code made with a token that is revoked before it is used signs no one in.
    code = tcp.post("/v1/ui/codes", headers={"Authorization": f"Bearer {secret}"}).json()["code"]
    svc.tenancy.revoke(SUPERUSER, token.id)
    assert tcp.post("/ui/session", json={"code": code}).status_code == 401


def test_roots_session_lives_behind_gureum_ui_only(world):
    """Review: root's tunnel session cookie, sent by the browser to any port of localhost,
    worked on the TCP listener as the administrator."""
    _, admin, tcp, _, _ = world
    code = admin.post("/v1/ui/codes").json()["code"]
    assert tcp.post("/ui/session", json={"code": code}).status_code == 403  # not over TCP
    page, _ = sign_in(tcp.ui, code=admin.post("/v1/ui/codes").json()["code"])
    assert tcp.get("/ui/session", headers={"Cookie": page["Cookie"]}).status_code == 401
    assert tcp.post("/v1/projects", json={"name": "mine"}, headers=page).status_code == 401
    assert tcp.ui.post("/v1/ui/codes", headers=page).status_code == 403


def test_the_tunnel_answers_to_localhost_only(world):
    """A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) is refused."""
    _, _, tcp, _, _ = world
    assert tcp.ui.get("/ui/").status_code == 200
    rebound = tcp.ui.get("/ui/", headers={"Host": "evil.example:8123"})
    assert rebound.status_code == 421


def test_one_users_sign_ins_end_their_own_sessions_only(world):
    """Review: a tenant signing in 1000 times pushed everyone else's sessions out."""
    svc, _, tcp, secret, _ = world
    bob = svc.tenancy.create_user("bob")
    svc.tenancy.store.set_role(svc.tenancy.scope(SUPERUSER, None).project.id, bob.id, Role.VIEWER)
    bob_secret = svc.tenancy.create_token(SUPERUSER, "bob", "t")[1]
    page, _ = sign_in(tcp, token=secret)
    tcp.app.state.signin_limiter.rate = 0  # no rate limit: only the bound per user is tried
    for _ in range(sessions.MAX_SESSIONS_EACH + 5):
        sign_in(tcp, token=bob_secret)
    assert tcp.get("/v1/instances", headers={"Cookie": page["Cookie"]}).status_code == 200


def test_refused_sign_ins_do_not_fill_the_audit(world):
    """Review: 600 refused console calls were 600 audit entries. They are now recorded as any
    call without an identity is: a burst of 60 per address, then one a second."""
    svc, _, tcp, _, _ = world
    before = len(svc.tenancy.audit(limit=1000))
    for _ in range(100):
        tcp.post("/ui/session", json={"code": "x"})
        tcp.delete("/ui/session")  # no session: nothing to record
        tcp.post("/ui/whatever")
    assert len(svc.tenancy.audit(limit=1000)) - before <= 60 + 5


def test_the_admin_socket_does_not_make_sessions(world):
    _, admin, _, secret, _ = world
    assert admin.post("/ui/session", json={"token": secret}).status_code == 403
