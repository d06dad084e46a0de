"""Hosts joining the cluster (issue 17, part 1) over real TLS on loopback: the control plane's
cluster port in a thread of its own, the agent's side as `gureum agent` runs it. A join token
works once and within its hour; an agent that reached another CA sends nothing; a certificate
the cluster CA did not issue, or issued for a host the store does not hold, reports nothing."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gureum.api.cluster_port import ClusterPort
from gureum.errors import Conflict, GureumError, InvalidState
from gureum.host import enrolment as agent
from gureum.model.cluster import JoinToken
from gureum.service import enrolment
from gureum.service.enrolment import EnrolmentService
from gureum.service.placement import Want
from gureum.sys.pki import csr_pem, new_key_pem
from tests.unit.fakeworld import fake_services

FACTS = {"accel": "tcg", "cpus": 16, "memory_mib": 65536, "memory_reserve_mib": 4096,
         "cpu_overcommit": 2.0}  # fmt: skip


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.svc, self.host = fake_services(tmp_path)
        self.store = self.svc.hosts.store
        self.ca = self.svc.enrolment.ca  # the control plane's own, as `gureum serve` has it
        self.enrolment = EnrolmentService(self.ca, self.store, "")
        self.agents = self.svc.agents  # the control plane asking agents, as its services do
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        lifecycle = self.svc.instances.lifecycle
        self.port = ClusterPort(self.ca, self.enrolment, self.svc.images, lifecycle.host_event,
                                self.svc.networks.caller_on)  # fmt: skip
        number = asyncio.run_coroutine_threadsafe(self.port.start("127.0.0.1", 0), self.loop)
        self.enrolment.cluster_listen = f"127.0.0.1:{number.result(10)}"

    def run(self, coro):  # type: ignore[no-untyped-def]
        """Run a coroutine on the cluster's loop (where its servers live); its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.port.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.svc.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.close()


def test_a_host_joins_with_a_token_and_reports(cluster: Cluster, tmp_path: Path) -> None:
    token, expires = cluster.enrolment.enrol("h2", "127.0.0.1:8444")
    assert 3590 < expires - time.time() <= 3600
    folder = tmp_path / "h2" / "agent"
    assert agent.join(token, folder) == "h2"
    assert (folder / "agent.key").stat().st_mode & 0o777 == 0o600
    assert agent.joined(folder) == {"control_plane": cluster.enrolment.cluster_listen, "host": "h2",
                                    "address": "127.0.0.1:8444"}  # fmt: skip
    (h2,) = [h for h in cluster.svc.hosts.list() if h["name"] == "h2"]
    assert (h2["state"], h2["address"], h2["local"]) == ("unreachable", "127.0.0.1:8444", False)
    assert agent.heartbeat(folder, FACTS) == {"ok": True, "host": "h2", "control_planes": []}
    (h2,) = [h for h in cluster.svc.hosts.list() if h["name"] == "h2"]
    assert h2["state"] == "ready" and h2["capacity"]["vcpu_limit"] == 32
    # The token works once: a second join (the same token replayed) is refused.
    with pytest.raises(GureumError, match="unknown, already used or expired") as replay:
        agent.join(token, tmp_path / "again")
    assert replay.value.code == "unauthenticated"
    assert not (tmp_path / "again" / "agent.pem").exists()


def test_an_agent_reports_to_another_control_plane_when_its_own_is_gone(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A second control plane (the same CA and store, its own cluster port): the heartbeat's
    answer names both; with the first gone, the agent's reports reach the second, which it
    tries first from then on. A bad address in the answer is not kept."""
    other = ClusterPort(cluster.ca, cluster.enrolment, cluster.svc.images)
    second = f"127.0.0.1:{cluster.run(other.start('127.0.0.1', 0))}"
    first = cluster.enrolment.cluster_listen
    cluster.enrolment.control_planes = lambda: [first, second, "no place;rm -rf /"]
    token, _ = cluster.enrolment.enrol("h2", "127.0.0.1:8444")
    folder = tmp_path / "h2" / "agent"
    agent.join(token, folder)
    agent.heartbeat(folder, FACTS)
    assert agent.control_planes(folder) == [first, second]
    cluster.run(cluster.port.stop())
    try:
        assert agent.heartbeat(folder, FACTS)["host"] == "h2"
        assert agent.control_planes(folder) == [second, first]
        assert agent.joined(folder)["host"] == "h2"
    finally:
        cluster.run(other.stop())
        cluster.run(cluster.port.start("127.0.0.1", int(first.rpartition(":")[2])))


def test_an_agent_passes_over_a_server_that_is_not_its_control_plane(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The control plane an agent knows first is gone and another cluster's server answers at
    its address: that one fails the certificate check, and the agent's report goes on to the
    next control plane it was told of, which it tries first from then on."""
    import json

    from gureum.service.cluster_ca import ClusterCA

    foreign_ca = ClusterCA(tmp_path / "foreign")
    foreign_ca.ensure()
    foreign = ClusterPort(foreign_ca, EnrolmentService(foreign_ca, cluster.store, ""),
                          cluster.svc.images)  # fmt: skip
    bogus = f"127.0.0.1:{cluster.run(foreign.start('127.0.0.1', 0))}"
    real = cluster.enrolment.cluster_listen
    token, _ = cluster.enrolment.enrol("h2", "127.0.0.1:8444")
    folder = tmp_path / "h2" / "agent"
    agent.join(token, folder)
    told = {**agent.joined(folder), "control_plane": bogus, "control_planes": [real]}
    (folder / "cluster.json").write_text(json.dumps(told))
    try:
        assert agent.heartbeat(folder, FACTS)["host"] == "h2"
        assert agent.control_planes(folder)[0] == real
    finally:
        cluster.run(foreign.stop())


def test_an_expired_token_is_refused(cluster: Cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(enrolment, "JOIN_TOKEN_TTL_S", -1.0)
    token, _ = cluster.enrolment.enrol("h3", "127.0.0.1:8444")
    with pytest.raises(GureumError, match="expired"):
        agent.join(token, tmp_path / "h3")
    assert cluster.store.get("h3") is None


def test_an_agent_that_reached_another_ca_sends_nothing(cluster: Cluster, tmp_path) -> None:
    token = JoinToken.parse(cluster.enrolment.enrol("h4", "127.0.0.1:8444")[0])
    elsewhere = JoinToken(token.control_plane, token.host, token.secret, "0" * 64)
    with pytest.raises(GureumError, match="another CA than the token names"):
        agent.join(elsewhere.encode(), tmp_path / "h4")
    # The secret was never sent: the real token still works.
    assert agent.join(token.encode(), tmp_path / "h4") == "h4"


def _forged(name: str) -> tuple[bytes, bytes]:
    """A key and a certificate for ``name``, self-signed: not the cluster CA's."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_forged_and_foreign_certificates_report_nothing(cluster: Cluster, tmp_path) -> None:
    token, _ = cluster.enrolment.enrol("h5", "127.0.0.1:8444")
    folder = tmp_path / "h5"
    agent.join(token, folder)
    agent.heartbeat(folder, FACTS)
    before = cluster.store.get("h5").heartbeat_at
    # A certificate for h5 that the cluster CA did not sign: the TLS handshake refuses it.
    key, cert = _forged("h5")
    (folder / "agent.key").write_bytes(key)
    (folder / "agent.pem").write_bytes(cert)
    with pytest.raises(GureumError):
        agent.heartbeat(folder, FACTS)
    # One the CA signed, but for a host the store does not hold (or for the control plane).
    for name in ("h9", "control-plane"):
        key = new_key_pem()
        (folder / "agent.key").write_bytes(key)
        (folder / "agent.pem").write_bytes(cluster.ca.issue(csr_pem(key, name), name))
        with pytest.raises(GureumError, match="not an enrolled host") as refused:
            agent.heartbeat(folder, FACTS)
        assert refused.value.code == "unauthenticated"
    assert cluster.store.get("h5").heartbeat_at == before
    assert cluster.store.get("h9") is None


def test_a_heartbeat_with_wild_figures_is_refused(cluster: Cluster, tmp_path) -> None:
    token, _ = cluster.enrolment.enrol("h6", "127.0.0.1:8444")
    agent.join(token, tmp_path / "h6")
    for bad in ({"cpus": -1}, {"memory_mib": "lots"}, {"cpu_overcommit": 1e9}, {"accel": 7}):
        with pytest.raises(GureumError) as refused:
            agent.heartbeat(tmp_path / "h6", FACTS | bad)
        assert refused.value.code == "invalid-input"
    assert cluster.store.get("h6").cpus == 0  # nothing recorded


def test_enrolling_needs_a_cluster_port_and_a_new_name(cluster: Cluster, tmp_path) -> None:
    cluster.enrolment.enrol("h7", "127.0.0.1:8444")
    agent.join(cluster.enrolment.enrol("h8", "127.0.0.1:8444")[0], tmp_path / "h8")
    with pytest.raises(Conflict):
        cluster.enrolment.enrol("h8", "127.0.0.1:8444")
    cluster.enrolment.cluster_listen = ""
    with pytest.raises(InvalidState, match="cluster_listen"):
        cluster.enrolment.enrol("h10", "127.0.0.1:8444")
    # Joined hosts are listed, but nothing is placed on them: their agents are not driven yet.
    assert cluster.svc.hosts.place(Want(1, 256)) == cluster.svc.hosts.name
