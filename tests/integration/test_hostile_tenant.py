"""A hostile tenant against the real service (issue 9): uploads that never finish, and a
service that must still answer everyone else and stop when told.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import socket
import tarfile
import time

import pytest

from gureum.client.client import ApiError
from gureum.sys import procs
from tests.integration.conftest import Service, _pids_named, new_home
from tests.waiting import wait_for

pytestmark = pytest.mark.vm

STALLED = 10  # more than asyncio's default pool on 2 cores (6 threads)


def bad_first_member() -> bytes:
    """A tar stream whose first member is not gureum-backup.json."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        info = tarfile.TarInfo("evil.txt")
        info.size = 512
        tar.addfile(info, io.BytesIO(b"x" * 512))
    return out.getvalue()[:1024]


def good_start() -> bytes:
    """The start of a real archive (its header member), to be continued... never."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        data = b'{"format": "gureum-backup", "version": 1}'
        info = tarfile.TarInfo("gureum-backup.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()[:1024]


def upload(service: Service, start: bytes, *, more: int) -> socket.socket:
    """Start an import of a 64 MiB body: ``start``, then ``more`` zero bytes, then nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(service.home / "gureum.sock"))
    sock.sendall(
        b"POST /v1/backups/import?name=stalled HTTP/1.1\r\nHost: gureum\r\n"
        b"Content-Type: application/x-tar\r\nContent-Length: 67108864\r\n\r\n" + start
    )
    sock.setblocking(False)
    sent, zeros = 0, bytes(65536)
    deadline = time.monotonic() + 10
    while sent < more and time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            sent += sock.send(zeros[: more - sent])
    sock.setblocking(True)
    return sock


def answer(sock: socket.socket, timeout: float) -> bytes:
    """The whole HTTP answer (head and body may come in separate segments); b"" if none."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_bad_archive_is_answered_at_once_and_stalls_no_one(service):
    socks = [upload(service, bad_first_member(), more=256 * 1024) for _ in range(STALLED)]
    try:
        # Each is answered at once: refused as a bad archive, or (past the two transfers a
        # project may have under way) as too many.
        replies = [answer(s, 15) for s in socks]
        bad = [r for r in replies if r.startswith(b"HTTP/1.1 400") and b"invalid-archive" in r]
        busy = [r for r in replies if r.startswith(b"HTTP/1.1 429") and b"rate-limited" in r]
        assert bad and len(bad) + len(busy) == STALLED, replies
        # The clients still hold their connections; the service answers others, and a launch
        # (which needs the shared thread pool) goes through.
        started = time.monotonic()
        service.launch("after-flood")
        assert time.monotonic() - started < 120
    finally:
        for s in socks:
            s.close()
        service.cli("delete", "after-flood", "--force", check=False)
    scratch = service.home / "scratch"
    wait_for(lambda: not list(scratch.iterdir()), 10, what="scratch emptied")


def test_sigterm_stops_the_service_whatever_uploads_are_in_flight():
    svc = Service(new_home())
    try:
        svc.start()
        bad = [upload(svc, bad_first_member(), more=256 * 1024) for _ in range(STALLED // 2)]
        socks = bad + [upload(svc, good_start(), more=0) for _ in range(STALLED // 2)]
        # In flight: the service has read the uploads (it has answered the bad ones).
        wait_for(lambda: len(select.select(bad, [], [], 0)[0]) == len(bad), 15,
                 what="the bad uploads answered")  # fmt: skip
        assert svc.proc is not None
        started = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(30)
        assert time.monotonic() - started < 20  # GUREUM_STOP_TIMEOUT of the harness
        for s in socks:
            s.close()
    finally:
        svc.cleanup()


def dnsmasqs(service: Service) -> list[int]:
    return [p for p in _pids_named("dnsmasq")
            if any(str(service.home) in a for a in procs.cmdline(p))]  # fmt: skip


def test_a_network_dnsmasq_killed_from_outside_is_restarted(service):
    service.launch("dns-before")  # the default network and its dnsmasq exist
    try:
        killed = dnsmasqs(service)
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: set(dnsmasqs(service)) - set(killed), 15, interval=0.2,
                 what="dnsmasq restarted")  # fmt: skip
        inst = service.launch("dns-after")
        ip = inst["nics"][0]["ip"]
        show = "ip -4 addr show eth0"
        wait_for(lambda: f"inet {ip}/" in service.exec("dns-after", "/bin/sh", "-c", show), 30,
                 interval=0.5, what=f"dns-after has {ip}")  # fmt: skip
    finally:
        service.cli("delete", "dns-before", "--force", check=False)
        service.cli("delete", "dns-after", "--force", check=False)


@pytest.fixture(scope="module")
def guests(service):
    service.launch("flooder")
    service.launch("neighbour")
    yield
    for name in ("flooder", "neighbour"):
        service.cli("delete", name, "--force", check=False)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# Every process the flood starts leaves the agent's output pipes alone (or exec would wait).
FLOOD = (
    "(for i in $(seq 100); do"
    " (printf 'GET /latest/meta-data/ HTTP/1.1\\r\\nHost: x'; sleep 60)"
    " | nc 169.254.169.254 80 &"
    " done) </dev/null >/dev/null 2>&1; sleep 3"
)


def test_a_guest_flooding_the_metadata_service_stalls_no_one(service, guests):
    """From inside a VM: a hundred half-open connections to 169.254.169.254. The service holds
    a bounded number, the other VM's metadata and everyone's API calls still answer, and the
    log does not fill with errors."""
    assert service.proc is not None
    before = descriptors(service.proc.pid)
    log_before = (service.home / "service.log").stat().st_size
    service.exec("flooder", "/bin/sh", "-c", FLOOD)
    try:
        assert descriptors(service.proc.pid) - before < 40
        md = "wget -qO- http://169.254.169.254/latest/meta-data/hostname"
        assert service.exec("neighbour", "/bin/sh", "-c", md) == "neighbour"
        with service.client() as c:
            assert c.instance("neighbour")["state"] == "running"
    finally:
        service.exec("flooder", "/bin/sh", "-c", "pkill nc; pkill sleep; true")
    assert (service.home / "service.log").stat().st_size - log_before < 64 * 1024
    md = "wget -qO- http://169.254.169.254/latest/meta-data/hostname"

    def answered():
        with service.client() as c:
            out = c.exec("flooder", ["/bin/sh", "-c", md])
        return out["exit_code"] == 0 and out

    # The flooder's own limit frees as its connections go.
    out = wait_for(answered, 15, interval=1, what="the flooder's metadata answered")
    assert out["stdout"] == b"flooder"


def test_a_command_past_its_timeout_is_killed_in_the_guest(service, guests):
    with service.client() as c, pytest.raises(ApiError) as refused:
        c.exec("neighbour", ["/bin/sh", "-c", "sleep 300 & sleep 301"], timeout=2)
    assert refused.value.code == "timeout"
    ps = "ps | grep '[s]leep 30' || true"
    wait_for(lambda: not service.exec("neighbour", "/bin/sh", "-c", ps), 10, interval=0.5,
             what="the sleeps killed")  # fmt: skip
