"""A hostile tenant against the real service (issue 9): uploads that never finish, and a
service that must still answer everyone else and stop when told.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import tarfile
import time

import pytest

from gureum.engine.qemu import process
from tests.integration.conftest import Service, _pids_named, new_home

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
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return b""


def test_a_bad_archive_is_answered_at_once_and_stalls_no_one(service):
    socks = [upload(service, bad_first_member(), more=256 * 1024) for _ in range(STALLED)]
    try:
        replies = [answer(s, 15) for s in socks]
        assert all(r.startswith(b"HTTP/1.1 400") for r in replies), replies
        assert all(b"invalid-archive" in r for r in replies)
        # The clients still hold their connections; the service answers others, and a launch
        # (which needs the shared thread pool) goes through.
        started = time.monotonic()
        service.launch("after-flood")
        assert time.monotonic() - started < 120
    finally:
        for s in socks:
            s.close()
        service.cli("delete", "after-flood", "--force", check=False)
    deadline = time.monotonic() + 10
    while list((service.home / "scratch").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((service.home / "scratch").iterdir())


def test_sigterm_stops_the_service_whatever_uploads_are_in_flight():
    svc = Service(new_home())
    try:
        svc.start()
        socks = [upload(svc, bad_first_member(), more=256 * 1024) for _ in range(STALLED // 2)]
        socks += [upload(svc, good_start(), more=0) for _ in range(STALLED // 2)]
        time.sleep(1)
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
            if any(str(service.home) in a for a in process.cmdline(p))]  # fmt: skip


def test_a_network_dnsmasq_killed_from_outside_is_restarted(service):
    service.launch("dns-before")  # the default network and its dnsmasq exist
    try:
        killed = dnsmasqs(service)
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not set(dnsmasqs(service)) - set(killed):
            time.sleep(0.2)
        assert set(dnsmasqs(service)) - set(killed), "dnsmasq was not restarted"
        inst = service.launch("dns-after")
        ip = inst["nics"][0]["ip"]
        deadline, seen = time.monotonic() + 30, ""
        while time.monotonic() < deadline and f"inet {ip}/" not in seen:
            seen = service.exec("dns-after", "/bin/sh", "-c", "ip -4 addr show eth0")
            time.sleep(0.5)
        assert f"inet {ip}/" in seen
    finally:
        service.cli("delete", "dns-before", "--force", check=False)
        service.cli("delete", "dns-after", "--force", check=False)
