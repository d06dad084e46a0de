"""The event stream through the API (`/v1/events`, a WebSocket): a launch's events as they
happen, each caller's projects only, resumption from a position, and refusals."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gureum.api.app import create_app
from gureum.config import load_config
from gureum.model.tenancy import Role
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakeworld import fake_api, finish


def test_a_launch_is_seen_as_it_happens(tmp_path):
    with (
        fake_api(tmp_path, ("tiny",)) as (root, svc, _),
        root.websocket_connect("/v1/events") as ws,
    ):
        hello = ws.receive_json()
        assert hello["stream"] == svc.events.stream and not hello["gap"]
        resp = root.post("/v1/instances", json={"name": "web", "image": "tiny"})
        finish(root, svc, resp.json()["operation"]["id"])
        seen = []
        while not (seen and seen[-1].get("state") == "running"):
            event = ws.receive_json()
            if event["kind"] == "instance":
                seen.append(event)
        assert seen[0]["change"] == "created"
        assert [e["state"] for e in seen][-2:] == ["starting", "running"]
        assert all(e["name"] == "web" and e["project_id"] == "p-default" for e in seen)
        positions = [e["seq"] for e in seen]
        assert positions == sorted(positions)


@pytest.fixture
def tcp_world(tmp_path):
    """The TCP app (a token on every call) with two projects and their people."""
    svc = Services.build(load_config(tmp_path / "home", env={"GUREUM_RATE_LIMIT": "0"}))
    svc.tenancy.ensure_default()
    t = svc.tenancy
    team_a, team_b = t.create_project("team-a", {}), t.create_project("team-b", {})
    tokens = {}
    for name, project, role in (("vera", team_a, Role.VIEWER), ("bob", team_b, Role.ADMIN)):
        user = t.create_user(name)
        t.store.set_role(project.id, user.id, role)
        tokens[name] = t.create_token(SUPERUSER, name, "test")[1]
    with TestClient(create_app(svc, "tcp")) as client:
        yield client, svc, tokens, team_a.id, team_b.id
    svc.close()


def headers(token: str, project: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Gureum-Project": project}


def test_a_viewer_sees_its_projects_events_and_never_anothers(tcp_world):
    client, svc, tokens, team_a, team_b = tcp_world

    def publish(project: str | None, n: int) -> None:
        client.portal.call(lambda: svc.events.publish("instance", project, n=n))  # type: ignore[union-attr]

    with client.websocket_connect("/v1/events", headers=headers(tokens["vera"], "team-a")) as ws:
        ws.receive_json()
        publish(team_b, 1)
        publish(None, 2)  # the host's own: administrators only
        publish(team_a, 3)
        assert ws.receive_json()["n"] == 3  # 1 and 2 never came
    # Resumed from before all three: still only its own.
    with client.websocket_connect(
        f"/v1/events?stream={svc.events.stream}&after=0", headers=headers(tokens["vera"], "team-a")
    ) as ws:
        assert not ws.receive_json()["gap"]
        assert ws.receive_json()["n"] == 3
    # Another run's position: told it has a gap (list again), then the events from now.
    with client.websocket_connect(
        "/v1/events?stream=es-old&after=5", headers=headers(tokens["vera"], "team-a")
    ) as ws:
        assert ws.receive_json()["gap"]


@pytest.mark.parametrize(
    ("who", "project", "query", "code"),
    [
        (None, "team-a", "", 4401),  # no token
        ("vera", "team-b", "", 4404),  # not her project: as if it did not exist
        ("vera", "team-a", "?all_projects=true", 4403),  # the administrator's
    ],
)
def test_the_stream_is_refused_as_the_api_refuses(tcp_world, who, project, query, code):
    client, _, tokens, _, _ = tcp_world
    hdrs = headers(tokens[who], project) if who else {"X-Gureum-Project": project}
    said = []
    with pytest.raises(WebSocketDisconnect) as closed:  # noqa: SIM117 - the close is the point
        with client.websocket_connect(f"/v1/events{query}", headers=hdrs) as ws:
            while True:  # an error frame first where the route refuses (not the middleware)
                said.append(ws.receive_json())
    assert closed.value.code == code
    assert all("error" in frame for frame in said)  # never an event
