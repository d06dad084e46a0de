"""A host agent's command port and the control plane asking it (issue 17, part 1), over real
TLS on loopback: the agent answers the control plane's certificate alone (not another host's,
not one from another CA, not none), and the control plane talks only to the agent whose
certificate was issued for the host it means to reach."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gureum.config import load_config
from gureum.errors import (
    GureumError,
    InvalidInput,
    InvalidState,
    NotFound,
    Unavailable,
    Untrusted,
)
from gureum.host import enrolment as agent
from gureum.host.agent_port import AgentPort
from gureum.host.remote_calls import REMOTE_ROOT
from gureum.model.cluster import CONTROL_PLANE
from gureum.model.image import Image
from gureum.model.network import Network
from gureum.sys import jsonline
from gureum.sys.jsonline import tls_context
from tests.unit.test_enrolment import FACTS, Cluster, _forged


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _joined(cluster: Cluster, tmp_path: Path, name: str) -> tuple[Path, str]:
    """A host enrolled at a free loopback port and joined; its folder and address."""
    address = f"127.0.0.1:{_free_port()}"
    token, _ = cluster.enrolment.enrol(name, address)
    folder = load_config(tmp_path / name).agent_dir  # as `gureum agent` keeps it
    agent.join(token, folder)
    agent.heartbeat(folder, FACTS)
    return folder, address


def _serving(cluster: Cluster, folder: Path, listen: str | None = None) -> AgentPort:
    """The agent of the home ``folder`` is in, answering on its port (its host: the fake)."""
    port = AgentPort(load_config(folder.parent), cluster.host)
    cluster.run(port.start(listen))
    return port


def test_the_control_plane_asks_a_joined_agent(cluster: Cluster, tmp_path: Path) -> None:
    folder, address = _joined(cluster, tmp_path, "h2")
    assert agent.joined(folder)["address"] == address  # type: ignore[index]
    port = _serving(cluster, folder)
    try:
        seen = cluster.run(cluster.agents.check("h2"))
        assert seen["host"] == "h2" and seen["round_trip_ms"] > 0
        cap = cluster.host.capacity()
        assert seen["facts"] == {"host": "h2", "accel": cluster.host.accel.accel,
                                 "cpus": cap.cpus, "memory_mib": cap.memory_mib,
                                 "memory_reserve_mib": cap.memory_reserve_mib,
                                 "cpu_overcommit": cap.cpu_overcommit}  # fmt: skip
        ids = ["i-0123456789ab"]
        asked = cluster.run(cluster.agents.ask("h2", {"op": "running", "ids": ids}))
        assert asked == {"running": {"i-0123456789ab": None}, "watched": [], "clean": []}
        for bad in ({"op": "running", "ids": ["../x"]}, {"op": "running", "ids": "i-1"},
                    {"op": "destroy-everything"}):  # fmt: skip
            with pytest.raises(GureumError) as refused:
                cluster.run(cluster.agents.ask("h2", bad))
            assert refused.value.code == "invalid-input"
    finally:
        cluster.run(port.stop())
    # Gone: the control plane says it cannot reach it.
    with pytest.raises(Unavailable, match="cannot reach h2"):
        cluster.run(cluster.agents.ask("h2", {"op": "facts"}))
    with pytest.raises(GureumError) as unknown:
        cluster.run(cluster.agents.ask("h9", {"op": "facts"}))
    assert unknown.value.code == "not-found"


def test_the_agent_takes_commands_from_the_control_plane_alone(
    cluster: Cluster, tmp_path: Path
) -> None:
    folder, address = _joined(cluster, tmp_path, "h2")
    other, _ = _joined(cluster, tmp_path, "h3")
    port = _serving(cluster, folder)
    ca = (folder / "ca.pem").read_text()
    try:
        # Another enrolled host's certificate, issued by the same CA: refused by name.
        with pytest.raises(GureumError, match="from its control plane only") as refused:
            jsonline.ask_blocking(address, {"op": "facts"}, agent.own_context(other), "h2")
        assert refused.value.code == "unauthenticated"
        # A certificate for the control plane's name that the cluster CA did not issue, and no
        # certificate at all: the handshake itself fails, no request is read.
        key, cert = _forged(CONTROL_PLANE)
        (tmp_path / "forged.key").write_bytes(key)
        (tmp_path / "forged.pem").write_bytes(cert)
        forged = tls_context(False, ca, str(tmp_path / "forged.pem"), str(tmp_path / "forged.key"))
        for ctx in (forged, tls_context(False, ca)):
            with pytest.raises(Unavailable):
                jsonline.ask_blocking(address, {"op": "facts"}, ctx, "h2")
    finally:
        cluster.run(port.stop())


def test_the_control_plane_talks_only_to_the_host_it_means(
    cluster: Cluster, tmp_path: Path
) -> None:
    _, address = _joined(cluster, tmp_path, "h2")
    impostor, _ = _joined(cluster, tmp_path, "h3")
    # h3's agent (a real member of the cluster) answers at h2's address: its certificate is
    # for h3, so the control plane refuses it before sending anything.
    port = _serving(cluster, impostor, listen=address)
    try:
        with pytest.raises(Untrusted, match="host h2") as refused:
            cluster.run(cluster.agents.ask("h2", {"op": "facts"}))
        assert refused.value.status == 502  # not the caller's own identity: not 401
    finally:
        cluster.run(port.stop())
    # Something that is not the cluster's at all, with a certificate of its own for h2.
    key, cert = _forged("h2")
    (tmp_path / "h2.key").write_bytes(key)
    (tmp_path / "h2.pem").write_bytes(cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "h2.pem"), str(tmp_path / "h2.key"))

    async def answer(request, tls):  # type: ignore[no-untyped-def]
        return {"host": "h2"}

    fake = jsonline.LineServer(answer, ctx)
    host, _, number = address.rpartition(":")
    cluster.run(fake.start(host, int(number)))
    try:
        with pytest.raises(Untrusted, match="not the cluster's h2"):
            cluster.run(cluster.agents.ask("h2", {"op": "facts"}))
    finally:
        cluster.run(fake.stop())


def test_the_host_agent_interface_over_the_command_port(cluster: Cluster, tmp_path: Path) -> None:
    folder, _ = _joined(cluster, tmp_path, "h2")
    port = _serving(cluster, folder)
    home = port.home  # the agent's own
    remote = cluster.agents.host("h2")
    try:
        disk = remote.path("disks/i-0123456789ab/root.qcow2")
        assert disk == REMOTE_ROOT / "h2" / "disks/i-0123456789ab/root.qcow2"  # a stand-in here
        cluster.run(remote.create_disk(disk, remote.path("images/tiny/v1/disk.qcow2"), 1 << 30))
        there = home / "disks/i-0123456789ab/root.qcow2"  # the agent's own path
        assert there in cluster.host.files and cluster.host.sizes[there] == 1 << 30
        cluster.run(remote.remove_file(disk))
        assert there not in cluster.host.files
        net = Network("n-0123456789ab", "p-default", "lan", "10.90.0.0/24", False, False, 0.0)
        cluster.run(remote.ensure_network(net))
        assert net.id in cluster.host.networks
        assert cluster.run(remote.neighbour_mac(net.id, "10.90.0.2")) is None
        # The host's own refusal comes back as the same error.
        with pytest.raises(InvalidState, match="not running on this host"):
            cluster.run(remote.stop("i-0123456789ab", 5.0))
        # A path the store never recorded (not under a home) is not even sent.
        with pytest.raises(InvalidInput, match="not under"):
            cluster.run(remote.remove_file(Path("/etc/shadow")))
        # Nor is another host's.
        with pytest.raises(InvalidInput, match="not under"):
            cluster.run(remote.remove_file(REMOTE_ROOT / "h3" / "disks/x.qcow2"))
    finally:
        cluster.run(port.stop())
    # A hand-made call that climbs out of the agent's home is refused there, and one the
    # interface does not let travel too.
    port = _serving(cluster, folder)
    try:
        for bad, said in (
            (
                {"method": "remove_file", "args": {"path": "../../etc/shadow"}},
                "must stay in the host's",
            ),
            ({"method": "remove_leftovers", "args": {}}, "no remote method"),
        ):
            with pytest.raises(InvalidInput, match=said):
                cluster.run(remote.ask({"op": "call", **bad}))
    finally:
        cluster.run(port.stop())


def _catalog_image(cluster: Cluster, disk_bytes: int = 3 << 20) -> Image:
    """A catalog image on the control plane, with real files of its own."""
    folder = cluster.svc.config.images_dir / "tiny" / "v1"
    folder.mkdir(parents=True)
    files = {}
    for role, name, size in (("disk", "disk.qcow2", disk_bytes), ("kernel", "vmlinuz", 4096),
                             ("initrd", "initrd.img", 70_000)):  # fmt: skip
        data = os.urandom(size)
        (folder / name).write_bytes(data)
        files[role] = {"file": name, "bytes": size, "sha256": hashlib.sha256(data).hexdigest()}
    image = Image("tiny", "v1", "6.1", str(folder), files=files)
    cluster.svc.images.store.put(image)
    return image


def test_a_joined_host_fetches_a_catalog_image_and_checks_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = _catalog_image(cluster)
    folder, _ = _joined(cluster, tmp_path, "h2")
    port = _serving(cluster, folder)
    remote = cluster.agents.host("h2")
    there = port.images_dir / "tiny" / "v1"
    try:
        got = cluster.run(remote.ensure_image("tiny", "v1", image.files))
        assert (got["fetched"], got["present"]) == (["disk", "initrd", "kernel"], [])
        for role, entry in image.files.items():
            copy = there / str(entry["file"])
            assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry["sha256"], role
            assert copy.stat().st_mode & 0o777 == 0o644
        again = cluster.run(remote.ensure_image("tiny", "v1", image.files))
        assert (again["fetched"], again["present"]) == ([], ["disk", "initrd", "kernel"])
        # The control plane's file is not what the catalog recorded: nothing is kept.
        kernel = (there / "vmlinuz").read_bytes()
        (there / "vmlinuz").unlink()
        (Path(image.path) / "vmlinuz").write_bytes(os.urandom(4096))
        with pytest.raises(Unavailable, match="not the one the catalog recorded"):
            cluster.run(remote.ensure_image("tiny", "v1", image.files))
        assert sorted(p.name for p in there.iterdir()) == [
            ".verified.json", "disk.qcow2", "initrd.img"
        ]  # fmt: skip
        # Another version, a name or a file that would be a path, an image of a project.
        with pytest.raises(NotFound):
            cluster.run(remote.ensure_image("tiny", "v2", image.files))
        with pytest.raises(InvalidInput):
            cluster.run(remote.ensure_image("../tiny", "v1", image.files))
        evil = {"kernel": {**image.files["kernel"], "file": "../../../etc/cron.d/x"}}
        with pytest.raises(InvalidInput, match="bad file name"):
            cluster.run(remote.ensure_image("tiny", "v1", evil))
        mine = _catalog_image_of_project(cluster)
        with pytest.raises(NotFound):
            cluster.run(remote.ensure_image(mine.name, mine.version, mine.files))
        # A file of the right size but other bytes (built here, or changed) is fetched again.
        (Path(image.path) / "vmlinuz").write_bytes(kernel)
        (there / "vmlinuz").write_bytes(b"\0" * len(kernel))
        (there / ".verified.json").unlink()
        got = cluster.run(remote.ensure_image("tiny", "v1", image.files))
        assert got["fetched"] == ["kernel"] and (there / "vmlinuz").read_bytes() == kernel
        # A link where a folder of the images should be is not followed.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (port.images_dir / "tiny2").symlink_to(elsewhere)
        with pytest.raises(InvalidInput, match="not a folder of this host's images"):
            cluster.run(remote.ensure_image("tiny2", "v1", image.files))
        assert list(elsewhere.iterdir()) == []
    finally:
        cluster.run(port.stop())
    # The cluster port serves image files to enrolled hosts' agents alone.
    ctx = tls_context(False, cluster.ca.pem.decode())
    with pytest.raises(GureumError, match="needs the agent's certificate"):
        jsonline.ask_blocking(cluster.enrolment.cluster_listen,
                              {"op": "image-file", "image": "tiny", "version": "v1",
                               "role": "disk"}, ctx, CONTROL_PLANE)  # fmt: skip


def _catalog_image_of_project(cluster: Cluster) -> Image:
    folder = cluster.svc.config.project_images_dir / "mine" / "v1"
    folder.mkdir(parents=True)
    (folder / "disk.qcow2").write_bytes(b"x" * 10)
    sha = hashlib.sha256(b"x" * 10).hexdigest()
    image = Image("mine", "v1", "", str(folder), project_id="p-default",
                  files={"disk": {"file": "disk.qcow2", "bytes": 10, "sha256": sha}})  # fmt: skip
    cluster.svc.images.store.put(image)
    return image


def test_what_a_hostile_agent_answers_is_not_taken_as_said(
    cluster: Cluster, tmp_path: Path
) -> None:
    folder, address = _joined(cluster, tmp_path, "h2")
    answers: list[dict[str, object]] = []

    async def hostile(request, tls):  # type: ignore[no-untyped-def]
        return answers.pop(0)

    ctx = agent.own_context(folder, server=True)
    fake = jsonline.LineServer(hostile, ctx)
    host, _, number = address.rpartition(":")
    cluster.run(fake.start(host, int(number)))
    remote = cluster.agents.host("h2")
    try:
        answers.append({"result": {"exit_code": 0, "stdout": "not base64!", "stderr": ""}})
        with pytest.raises(Unavailable, match="h2 gave a malformed answer"):
            cluster.run(remote.exec("i-0123456789ab", ["true"], None, 5.0))
        answers.append({"result": {"at": 1e300 * 10, "cpu_seconds": None, "rss_bytes": None,
                                   "pss_bytes": None}})  # fmt: skip
        with pytest.raises(Unavailable):
            cluster.run(remote.instance_stats([]))
        # Only its host's own refusals pass as themselves; a 403 or a quota is not an agent's.
        for code in ("forbidden", "quota-exceeded", "unauthenticated-ish", "payload-too-large"):
            answers.append({"error": {"code": code, "message": "log in at http://evil"}})
            with pytest.raises(Unavailable, match=f"host h2 answered {code}"):
                cluster.run(remote.kill("i-0123456789ab"))
        answers.append({"error": {"code": "invalid-state", "message": "it is stopped"}})
        with pytest.raises(InvalidState, match="it is stopped"):
            cluster.run(remote.kill("i-0123456789ab"))
    finally:
        cluster.run(fake.stop())


def test_a_slow_reader_of_an_image_is_dropped_and_gives_its_slot_back(
    cluster: Cluster, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # A reader that keeps taking a little (each chunk within the request deadline) but far
    # below the minimum rate: dropped at the whole stream's deadline, not when it is done.
    monkeypatch.setattr(jsonline, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(jsonline, "MIN_RATE", 64 << 20)  # 64 MiB: a deadline of 2 s
    image = _catalog_image(cluster, disk_bytes=64 << 20)
    folder, _ = _joined(cluster, tmp_path, "h2")
    server = cluster.port.server
    request = {"op": "image-file", "image": "tiny", "version": "v1", "role": "disk"}

    async def read_slowly() -> tuple[float, int]:
        began, got = time.monotonic(), 0
        host, _, number = cluster.enrolment.cluster_listen.rpartition(":")
        reader, writer = await asyncio.open_connection(
            host, int(number), ssl=agent.own_context(folder), server_hostname=CONTROL_PLANE
        )
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        try:
            while chunk := await reader.read(64 << 10):  # about 1.3 MB/s
                got += len(chunk)
                await asyncio.sleep(0.05)
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()
        return time.monotonic() - began, got

    took, got = asyncio.run(read_slowly())
    assert got < image.files["disk"]["bytes"]  # type: ignore[operator]
    assert took < 10, took  # the old per-chunk deadline let it go on for some 50 s
    deadline = time.monotonic() + 5
    while server._open and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert server._open == 0  # type: ignore[union-attr]
