"""Hosts and placement through the API on one machine (issue 17): the host lists itself, each new
instance is placed by the scheduler (its host shown), a cordoned host takes no new instance but
keeps running its own, a spread group keeps two instances off one host, a pinned host must
exist; a refusal leaves nothing."""

from __future__ import annotations

import time

import pytest

from gureum.model.cluster import JoinToken
from tests.unit.fakeworld import fake_api, finish, launch


@pytest.fixture
def world(tmp_path):
    with fake_api(tmp_path, ("tiny",)) as (root, svc, host):
        yield root, svc, host


def refused(resp, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text
    return resp.json()["error"]["message"]


def test_the_host_lists_itself_and_places_each_new_instance(world) -> None:
    root, svc, _ = world
    here = svc.hosts.name
    web = launch(root, svc, "web", "tiny")
    assert web["placement"] == {"host": here, "spread_group": None}
    (only,) = root.get("/v1/hosts").json()
    assert (only["name"], only["state"], only["local"], only["instances"]) == (
        here,
        "ready",
        True,
        1,
    )
    assert only["committed"] == {"cpus": 1, "memory_mib": 256}
    assert only["capacity"]["vcpu_limit"] > 0


def test_a_cordoned_host_takes_no_new_instance_and_keeps_its_own(world) -> None:
    root, svc, _ = world
    here = svc.hosts.name
    launch(root, svc, "web", "tiny")
    assert root.post(f"/v1/hosts/{here}/cordon").json()["state"] == "cordoned"
    said = refused(root.post("/v1/instances", json={"name": "db", "image": "tiny"}), 409,
                   "insufficient-capacity")  # fmt: skip
    assert f"{here}: cordoned" in said
    assert [i.name for i in svc.instances.list()] == ["web"]  # nothing half-made
    # What is on it carries on.
    stop = root.post("/v1/instances/web/stop")
    assert finish(root, svc, stop.json()["id"]).error is None
    start = root.post("/v1/instances/web/start")
    assert finish(root, svc, start.json()["id"]).error is None
    assert root.post(f"/v1/hosts/{here}/uncordon").json()["state"] == "ready"
    assert launch(root, svc, "db", "tiny")["placement"]["host"] == here


def test_spread_groups_and_pinned_hosts(world) -> None:
    root, svc, _ = world
    here = svc.hosts.name
    launch(root, svc, "web1", "tiny", spread_group="web", host=here)
    said = refused(root.post("/v1/instances", json={"name": "web2", "image": "tiny",
                                                    "spread_group": "web"}),
                   409, "insufficient-capacity")  # fmt: skip
    assert "already runs an instance of spread group 'web'" in said
    assert launch(root, svc, "db1", "tiny", spread_group="db")["placement"]["spread_group"] == "db"
    said = refused(root.post("/v1/instances", json={"name": "x", "image": "tiny", "host": "h9"}),
                   400, "invalid-input")  # fmt: skip
    assert "no host named 'h9'" in said
    bad = root.post("/v1/instances", json={"name": "x", "image": "tiny", "spread_group": "a b"})
    assert "spread group" in refused(bad, 400, "invalid-input")
    assert sorted(i.name for i in svc.instances.list()) == ["db1", "web1"]
    assert refused(root.post("/v1/hosts/h9/cordon"), 404, "not-found") == "no host named 'h9'"


def test_instances_recorded_before_hosts_were_are_this_hosts(world) -> None:
    root, svc, _ = world
    web = launch(root, svc, "web", "tiny")
    inst = svc.instances.get(web["id"])
    svc.instances.store.update(inst.id, host=None)  # as migration 21 leaves an older store
    assert svc.instances.get(inst.id).host is None
    svc.hosts.report()
    assert svc.instances.get(inst.id).host == svc.hosts.name


def test_a_host_that_stops_heartbeating_is_unreachable_and_takes_nothing(world) -> None:
    root, svc, _ = world
    far = "far"
    old = time.time() - svc.config.host_unreachable_after_s - 1
    svc.hosts.store.report(far, old, accel="tcg", cpus=64, memory_mib=1 << 20,
                           memory_reserve_mib=1024, cpu_overcommit=1.0)  # fmt: skip
    states = {h["name"]: h["state"] for h in root.get("/v1/hosts").json()}
    assert states == {svc.hosts.name: "ready", far: "unreachable"}
    said = refused(root.post("/v1/instances", json={"name": "x", "image": "tiny", "host": far}),
                   409, "insufficient-capacity")  # fmt: skip
    assert "far: unreachable" in said
    # Spread would choose the far host, much the freer, were it reachable.
    assert launch(root, svc, "web", "tiny")["placement"]["host"] == svc.hosts.name
    svc.hosts.store.report(far, time.time(), accel="tcg", cpus=64, memory_mib=1 << 20,
                           memory_reserve_mib=1024, cpu_overcommit=1.0)  # fmt: skip
    (entry,) = [h for h in root.get("/v1/hosts").json() if h["name"] == far]
    assert (entry["state"], entry["instances"], entry["local"]) == ("ready", 0, False)
    # Reachable again, it reports; but its agent is not driven from here yet.
    said = refused(root.post("/v1/instances", json={"name": "x", "image": "tiny", "host": far}),
                   409, "insufficient-capacity")  # fmt: skip
    assert "far: its agent reports, but is not driven from here yet" in said
    assert launch(root, svc, "db", "tiny")["placement"]["host"] == svc.hosts.name


def test_instances_on_an_unreachable_host_are_shown_unknown_not_running(world) -> None:
    root, svc, _ = world
    far = "far"
    svc.hosts.store.report(far, time.time(), accel="tcg", cpus=64, memory_mib=1 << 20,
                           memory_reserve_mib=1024, cpu_overcommit=1.0)  # fmt: skip
    web = launch(root, svc, "web", "tiny")
    here = launch(root, svc, "db", "tiny")
    svc.instances.store.update(web["id"], host=far)  # as if placed there
    shown = root.get("/v1/instances/web").json()
    assert (shown["state"], shown.get("last_state")) == ("running", None)
    # It stops reporting: its instances are not known to run any more.
    old = time.time() - svc.config.host_unreachable_after_s - 5
    svc.hosts.store.report(far, old)
    shown = {i["name"]: i for i in root.get("/v1/instances").json()}
    assert (shown["web"]["state"], shown["web"]["last_state"]) == ("unknown", "running")
    assert "its host far is unreachable (last heard from" in shown["web"]["state_reason"]
    assert shown["web"]["pid"] is None
    assert shown["db"]["state"] == "running" and "last_state" not in shown["db"]
    assert here["placement"]["host"] == svc.hosts.name
    assert svc.instances.get(web["id"]).state.value == "running"  # the store keeps what it knew
    # It reports again: shown as it was.
    svc.hosts.store.report(far, time.time())
    assert root.get("/v1/instances/web").json()["state"] == "running"


def test_enrolling_a_host_through_the_api(world) -> None:
    root, svc, _ = world
    body = {"name": "h2", "address": "10.0.0.2:8444"}
    said = refused(root.post("/v1/hosts", json=body), 409, "invalid-state")
    assert "cluster_listen" in said
    svc.enrolment.cluster_listen = "127.0.0.1:8443"
    made = root.post("/v1/hosts", json=body)
    assert made.status_code == 201, made.text
    token = JoinToken.parse(made.json()["token"])
    assert (token.host, token.control_plane) == ("h2", "127.0.0.1:8443")
    assert token.ca == svc.enrolment.ca.fingerprint()
    bad = root.post("/v1/hosts", json={"name": "h3", "address": "no port"})
    assert "HOST:PORT" in refused(bad, 400, "invalid-input")
