"""The console's marker scanning and the guest-agent protocol, against a fake agent socket."""

import asyncio
import json
import os
from pathlib import Path

import pytest

from gureum.engine.qemu import serial
from gureum.engine.qemu.agent import GuestAgent
from gureum.engine.qemu.serial import SerialConsole, read_log, rotate_log
from gureum.errors import CommandNotFound, Timeout, Unavailable
from gureum.sys import procs
from gureum.sys.nofollow import open_nofollow


def test_markers_found_across_chunk_boundaries():
    seen = []
    console = SerialConsole(Path("/nonexistent"), lambda event, at: seen.append(event))
    console._scan(b"boot noise ... gureum-in", 1.0)
    console._scan(b"it: started\r\nmore", 2.0)
    console._scan(b" gureum-init: ready\r\n", 3.0)
    assert seen == ["init_started", "init_ready"]


def test_the_serial_log_is_rotated_under_a_writer_that_appends(tmp_path):
    """QEMU holds the log open with O_APPEND: after a rotation its writes start the log anew,
    and what came before is kept once, as serial.log.1."""
    log = tmp_path / "serial.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"a" * 3000 + b"b" * 2000)
        assert not rotate_log(log, cap=6000)
        assert rotate_log(log, cap=4000)
        assert log.stat().st_size == 0
        assert (tmp_path / "serial.log.1").read_bytes() == b"a" * 2000 + b"b" * 2000
        os.write(fd, b"after")
        assert log.read_bytes() == b"after"
        assert read_log(log, 8) == b"bbbafter"
        assert read_log(log, 0) == b"a" * 2000 + b"b" * 2000 + b"after"
    finally:
        os.close(fd)


def test_a_guest_that_floods_its_console_grows_neither_log_nor_viewers(tmp_path, monkeypatch):
    monkeypatch.setattr(serial, "LOG_CAP", 256 * 1024)
    monkeypatch.setattr(serial, "VIEWER_QUEUE", 16)
    sock, log = tmp_path / "serial.sock", tmp_path / "serial.log"

    async def scenario() -> None:
        async def guest(reader, writer):  # prints 8 MiB as fast as it can, into the log too
            with open(log, "ab") as f:
                for _ in range(128):
                    chunk = b"x" * 65536
                    f.write(chunk)
                    f.flush()
                    writer.write(chunk)
                    await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(guest, str(sock))
        console = SerialConsole(sock, lambda event, at: None, log)
        stalled = console.attach()  # a viewer that never reads
        await console.connect()
        await asyncio.wait_for(console._task, 30)
        assert stalled.qsize() == 1 and stalled.get_nowait() is None  # dropped, backlog gone
        assert log.stat().st_size <= 2 * serial.LOG_CAP
        server.close()
        await console.close()

    asyncio.run(scenario())


async def fake_agent(path: Path, replies: dict, stale: bytes = b"", hang: set = frozenset()):
    """A qemu-ga stand-in: answers guest-sync-delimited as the real one does (0xFF first)."""

    async def handle(reader, writer):
        writer.write(stale)  # leftovers of an earlier client, which the sync must discard
        while line := await reader.readline():
            msg = json.loads(line)
            cmd = msg["execute"]
            if cmd == "guest-sync-delimited":
                writer.write(
                    b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n"
                )
            elif cmd in hang:
                continue
            elif cmd in replies:
                writer.write(json.dumps(replies[cmd](msg.get("arguments"))).encode() + b"\n")
            await writer.drain()

    return await asyncio.start_unix_server(handle, str(path))


def test_agent_sync_exec_and_errors(tmp_path):
    async def main():
        sock = tmp_path / "qga.sock"
        status_calls = []

        def status(args):
            status_calls.append(args)
            if len(status_calls) < 3:
                return {"return": {"exited": False}}
            return {
                "return": {"exited": True, "exitcode": 3, "out-data": "aGVsbG8K", "err-data": ""}
            }

        replies = {
            "guest-ping": lambda a: {"return": {}},
            "guest-exec": lambda a: (
                {"return": {"pid": 42}}
                if a["path"] != "nope"
                else {"error": {"class": "GenericError", "desc": "Failed to execute child"}}
            ),
            "guest-exec-status": status,
        }
        server = await fake_agent(sock, replies, stale=b'{"return": {"stale": true}}\n')
        agent = GuestAgent(sock)
        await agent.ping()
        result = await agent.exec(["sh", "-c", "echo hello; exit 3"], stdin=b"in", timeout=5)
        assert (result.exit_code, result.stdout) == (3, b"hello\n")
        assert len(status_calls) == 3
        with pytest.raises(CommandNotFound, match="Failed to execute"):  # the CLI exits 127
            await agent.exec(["nope"], stdin=None, timeout=5)
        await agent.close()
        server.close()

    asyncio.run(main())


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    async def main():
        sock = tmp_path / "qga.sock"
        execs = []

        def guest_exec(args):
            execs.append(args)
            return {"return": {"pid": 42 + len(execs) - 1}}

        replies = {
            "guest-exec": guest_exec,
            "guest-exec-status": lambda a: {"return": {"exited": a["pid"] != 42}},
        }
        server = await fake_agent(sock, replies)
        agent = GuestAgent(sock)
        with pytest.raises(Timeout, match="it was killed"):
            await agent.exec(["sh", "-c", "sleep 1000"], timeout=0.2)
        assert len(execs) == 2
        assert execs[1]["path"] == "/bin/sh" and execs[1]["arg"][-1] == "42"
        assert "kill -KILL" in execs[1]["arg"][1] and "children" in execs[1]["arg"][1]
        await agent.close()
        server.close()

    asyncio.run(main())


def test_agent_timeout_drops_connection(tmp_path):
    async def main():
        sock = tmp_path / "qga.sock"
        server = await fake_agent(
            sock, {"guest-ping": lambda a: {"return": {}}}, hang={"guest-info"}
        )
        agent = GuestAgent(sock)
        with pytest.raises(Timeout):
            await agent.call("guest-info", timeout=0.2)
        assert agent._writer is None  # the next call reconnects and resyncs
        await agent.ping()
        await agent.close()
        server.close()

    asyncio.run(main())


def test_links_in_the_vms_runtime_folder_are_not_followed(tmp_path):
    """The runtime folder is the VM's user's: a link left there must not make root read or
    write another file (the rotated log, the console log)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's")
    rt = tmp_path / "rt"
    rt.mkdir()
    log = rt / "serial.log"
    log.write_bytes(b"x" * 100)
    (rt / "serial.log.1").symlink_to(secret)
    assert read_log(log, 0) == b"x" * 100  # the link is skipped
    assert not rotate_log(log, cap=10)  # refuses to write through it
    assert secret.read_bytes() == b"root's"
    (rt / "serial.log.1").unlink()
    log.unlink()
    log.symlink_to(secret)
    assert read_log(log, 0) == b""
    assert not rotate_log(log, cap=1)
    assert secret.read_bytes() == b"root's"


def test_open_nofollow_takes_plain_files_only(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        open_nofollow(fifo, "rb")  # would have blocked
    with pytest.raises(OSError):
        open_nofollow(fifo, "ab")
    plain = tmp_path / "plain"
    plain.write_bytes(b"a")
    os.link(plain, tmp_path / "second-name")
    with pytest.raises(OSError, match="more than one name"):
        open_nofollow(tmp_path / "second-name", "ab")
    with open_nofollow(plain, "rb") as f:
        assert f.read() == b"a"


def test_sockets_and_pid_files_in_the_vms_folder_are_not_followed(tmp_path):
    """A compromised QEMU could link its agent socket to another VM's, or make its pid file a
    FIFO (blocking root) or a link to /dev/zero (exhausting its memory)."""
    fifo = tmp_path / "qemu.pid"
    os.mkfifo(fifo)
    assert procs.read_pidfile(fifo) is None  # at once, not blocked
    zero = tmp_path / "zero.pid"
    zero.symlink_to("/dev/zero")
    assert procs.read_pidfile(zero) is None

    async def main():
        other = tmp_path / "other-vm-agent.sock"
        server = await fake_agent(other, {"guest-ping": lambda a: {"return": {}}})
        link = tmp_path / "agent.sock"
        link.symlink_to(other)
        with pytest.raises(Unavailable, match="not available"):
            await GuestAgent(link, owner=os.geteuid()).ping()
        with pytest.raises(Unavailable):  # a socket, but not this VM's user's
            await GuestAgent(other, owner=os.geteuid() + 1).ping()
        await GuestAgent(other, owner=os.geteuid()).ping()
        server.close()

    asyncio.run(main())
