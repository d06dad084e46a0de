"""Metrics: the rounds' figures in /metrics (parsed with Prometheus' own parser), each caller's
projects only, the host and the service's requests for the administrator only, the console's
graphs from the history, and the host's readers of what QEMU and guests answer."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gureum.api.app import create_app
from gureum.host import stats
from gureum.host.stats import DiskStats, InstanceStats, NicStats
from gureum.model.tenancy import Role
from gureum.service.metrics import Point, graph_point
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakeworld import fake_api, fake_services, finish


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, metric: str, **labels: str) -> float:
    found = [v for n, lab, v in samples(text) if n == metric and labels.items() <= lab.items()]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def launch(root: TestClient, svc, name: str, project: str | None = None) -> str:
    headers = {"X-Gureum-Project": project} if project else {}
    resp = root.post("/v1/instances", json={"name": name, "image": "tiny"}, headers=headers)
    assert resp.status_code == 202, resp.text
    finish(root, svc, resp.json()["operation"]["id"])
    return resp.json()["instance"]["id"]


def test_metrics_show_the_rounds_figures_of_each_instance(tmp_path):
    with fake_api(tmp_path, ("tiny",)) as (root, svc, host):
        web = launch(root, svc, "web")
        host.stats[web] = InstanceStats(
            at=time.time(),
            cpu_seconds=12.5,
            rss_bytes=300 << 20,
            pss_bytes=250 << 20,
            guest_memory_total_bytes=1 << 30,
            guest_memory_available_bytes=700 << 20,
            disks=(DiskStats("root-disk", 1000, 2000, 3, 4),),
            nics=(NicStats(0, "52:54:00:00:00:01", "n-x", 10, 20, 1, 2),),
        )
        root.portal.call(svc.metrics.sample)  # type: ignore[union-attr]
        resp = root.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text
        key = {"instance_id": web, "project": "default"}
        assert value(text, "gureum_instance_cpu_seconds_total", **key) == 12.5
        assert value(text, "gureum_instance_memory_rss_bytes", **key) == 300 << 20
        assert value(text, "gureum_instance_memory_pss_bytes", **key) == 250 << 20
        assert value(text, "gureum_instance_guest_memory_available_bytes", **key) == 700 << 20
        assert value(text, "gureum_instance_disk_written_bytes_total", device="root-disk") == 2000
        assert value(text, "gureum_instance_disk_reads_total", device="root-disk") == 3
        assert value(text, "gureum_instance_network_receive_bytes_total", nic="nic0") == 10
        assert value(text, "gureum_instance_network_transmit_packets_total", nic="nic0") == 2
        assert value(text, "gureum_instance_info", type="vm", state="running", **key) == 1
        # The project's allocation against its quotas, and the host (the administrator's).
        assert value(text, "gureum_project_allocated", project="default", resource="instances") == 1
        assert value(text, "gureum_host_cpus") == host.cpus
        assert value(text, "gureum_host_committed_vcpus") == 1
        assert value(text, "gureum_host_instances", state="running") == 1
        # The service's own requests, by route template (the launch above was one).
        assert (
            value(
                text,
                "gureum_http_requests_total",
                method="POST",
                route="/v1/instances",
                status="202",
            )
            >= 1
        )


def test_a_scrape_never_asks_the_host(tmp_path):
    """However often a tenant scrapes, the host is asked once per round, not per scrape."""
    with fake_api(tmp_path, ("tiny",)) as (root, svc, host):
        launch(root, svc, "web")
        root.portal.call(svc.metrics.sample)  # type: ignore[union-attr]
        before = host.rounds
        for _ in range(5):
            assert root.get("/metrics").status_code == 200
        assert host.rounds == before


@pytest.fixture
def two_teams(tmp_path):
    """The TCP app, a VM in each of two projects; vera views team-a, bob administers team-b."""
    svc, _ = fake_services(tmp_path, ("tiny",))
    t = svc.tenancy
    team_a = t.create_project("team-a", {"max_instances": 3})
    team_b = t.create_project("team-b", {})
    tokens = {}
    for name, project, role in (("vera", team_a, Role.VIEWER), ("bob", team_b, Role.ADMIN)):
        user = t.create_user(name)
        t.store.set_role(project.id, user.id, role)
        tokens[name] = t.create_token(SUPERUSER, name, "test")[1]
    with TestClient(create_app(svc)) as root, TestClient(create_app(svc, "tcp")) as tcp:
        ids = {
            "a": launch(root, svc, "web-a", "team-a"),
            "b": launch(root, svc, "web-b", "team-b"),
        }
        root.portal.call(svc.metrics.sample)  # type: ignore[union-attr]
        yield tcp, tokens, ids
    svc.close()


def test_a_token_sees_its_projects_figures_only(two_teams):
    tcp, tokens, ids = two_teams
    text = tcp.get("/metrics", headers={"Authorization": f"Bearer {tokens['vera']}"}).text
    seen = {lab.get("instance_id") for _, lab, _ in samples(text)} - {None}
    assert seen == {ids["a"]}
    assert {lab.get("project") for _, lab, _ in samples(text)} - {None} == {"team-a"}
    assert value(text, "gureum_project_quota", project="team-a", resource="instances") == 3
    # Neither the host's size nor the service's requests (who else does what, and when).
    names = {n for n, _, _ in samples(text)}
    assert not any(n.startswith(("gureum_host_", "gureum_http_", "gureum_metrics_")) for n in names)
    text = tcp.get("/metrics", headers={"Authorization": f"Bearer {tokens['bob']}"}).text
    assert {lab.get("instance_id") for _, lab, _ in samples(text)} - {None} == {ids["b"]}
    # No token, no figures.
    assert tcp.get("/metrics").status_code == 401


def test_an_instances_graph_is_its_projects_business(two_teams):
    tcp, tokens, ids = two_teams
    vera = {"Authorization": f"Bearer {tokens['vera']}", "X-Gureum-Project": "team-a"}
    resp = tcp.get(f"/v1/instances/{ids['a']}/metrics", headers=vera)
    assert resp.status_code == 200 and resp.json()["instance"] == ids["a"]
    assert tcp.get(f"/v1/instances/{ids['b']}/metrics", headers=vera).status_code == 404


def test_the_graph_has_one_point_per_interval_with_rates(tmp_path):
    with fake_api(tmp_path, ("tiny",)) as (root, svc, _):
        web = launch(root, svc, "web")
        for _ in range(3):
            root.portal.call(svc.metrics.sample)  # type: ignore[union-attr]
        points = root.get(f"/v1/instances/{web}/metrics").json()["points"]
        assert len(points) == 2
        assert all(p["cpu_percent"] is not None and p["cpu_percent"] > 0 for p in points)
        since = points[0]["t"]
        assert len(root.get(f"/v1/instances/{web}/metrics?since={since}").json()["points"]) == 1
        # A deleted instance's history goes with it.
        root.delete(f"/v1/instances/{web}?force=true")
        root.portal.call(svc.metrics.sample)  # type: ignore[union-attr]
        assert web not in svc.metrics.history


def test_rates_between_two_rounds_and_across_a_restart():
    a = Point(100.0, 10.0, 5, 1000, 400, 0, 4096, 0, 0)
    b = Point(110.0, 15.0, 6, 1000, 300, 1024, 8192, 50, 70)
    got = graph_point(a, b)
    assert got["cpu_percent"] == 50.0  # 5 s of CPU in 10 s
    assert got["disk_write_bps"] == 409.6 and got["disk_read_bps"] == 102.4
    assert got["guest_memory_used_bytes"] == 700
    restarted = Point(120.0, 0.5, 6, None, None, 0, 0, 0, 0)  # a new QEMU's counters
    got = graph_point(b, restarted)
    assert got["cpu_percent"] is None and got["disk_write_bps"] is None
    assert got["guest_memory_used_bytes"] is None


def test_what_a_guest_reports_of_its_memory_is_read_as_two_numbers_only():
    assert stats.meminfo(b"MemTotal:  1024 kB\nMemFree: 1 kB\nMemAvailable:   512 kB\n") == (
        1 << 20,
        512 << 10,
    )
    hostile = b"MemTotal: -5 kB\nMemAvailable: 99999999999999999999 kB\n" + b"x" * 5000
    assert stats.meminfo(hostile) == (None, None)
    assert stats.meminfo(b"\xff\xfe garbage") == (None, None)


def test_blockstats_names_the_disks_the_guest_sees():
    answer = [
        {
            "device": "",
            "qdev": "/machine/peripheral/root-disk/virtio-backend",
            "stats": {"rd_bytes": 1, "wr_bytes": 2, "rd_operations": 3, "wr_operations": 4},
        },
        {"device": "", "node-name": "#block123", "stats": {"rd_bytes": 9}},  # no device model
    ]
    assert stats.blockstats(answer) == (DiskStats("root-disk", 1, 2, 3, 4),)
    assert stats.blockstats({"error": "not a list"}) == ()


@pytest.mark.parametrize("reply", [b'{"return": []}', b'{"error": "x"}', b"[1, 2]", b'"text"'])
def test_a_guest_agent_answering_nonsense_costs_its_own_figure_only(tmp_path, reply):
    """Review: a qemu-ga answering {"error": "x"} or {"return": []} raised AttributeError out of
    the metrics round, which stopped every tenant's figures."""
    import asyncio
    import json as jsonlib

    from gureum.engine.qemu.agent import GuestAgent
    from gureum.errors import EngineError

    sock = tmp_path / "qga.sock"

    async def handle(reader, writer):
        while line := await reader.readline():
            msg = jsonlib.loads(line.strip().lstrip(b"\xff"))
            if msg["execute"] == "guest-sync-delimited":
                sync = jsonlib.dumps({"return": msg["arguments"]["id"]}).encode()
                writer.write(b"\xff" + sync + b"\n")
            elif msg["execute"] == "guest-file-open":
                writer.write(b'{"return": 7}\n')
            else:
                writer.write(reply + b"\n")
            await writer.drain()

    async def run() -> tuple[str, bytes]:
        server = await asyncio.start_unix_server(handle, str(sock))
        agent = GuestAgent(sock)
        try:
            with pytest.raises(EngineError) as raised:
                await agent.read_file("/proc/meminfo", stats.MEMINFO_LIMIT, 2.0)
            bounded = await stats.bounded(agent.read_file("/proc/meminfo", 4096, 2.0), b"-")
            return raised.value.message, bounded
        finally:
            await agent.close()
            server.close()

    message, bounded = asyncio.run(run())
    assert "guest agent" in message and bounded == b"-"


def test_made_up_methods_are_one_series(tmp_path):
    """Review: every invented HTTP method (even unauthenticated) was a series of its own."""
    with fake_api(tmp_path) as (root, _, _):
        for i in range(20):
            root.request(f"X{i}", "/anything")
        text = root.get("/metrics").text
        methods = {lab.get("method") for n, lab, _ in samples(text) if n.startswith("gureum_http")}
        assert not any(m and m.startswith("X") for m in methods) and "other" in methods
