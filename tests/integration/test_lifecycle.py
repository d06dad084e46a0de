"""A VM's whole life, checked from inside the guest: what it reports through the agent."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from gureum.cli.main import ExitCode
from gureum.sys import procs
from tests.waiting import wait_for

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def web(service):
    out = service.cli("launch", "tiny", "--name", "web1", "--cpus", "2", "--memory", "512M",
                      "--disk", "2G", "-o", "json")  # fmt: skip
    yield json.loads(out.stdout)
    service.cli("delete", "web1", "--force", check=False)


@pytest.fixture(autouse=True)
def web1_running(request):
    """Each test of web1 starts with it running, whatever an earlier test left."""
    if "web" in request.fixturenames:
        request.getfixturevalue("web")
        request.getfixturevalue("service").running("web1")


def test_launch_reports_a_ready_vm(web, service):
    assert web["state"] == "running" and web["name"] == "web1"
    assert web["accel"] == "tcg"  # this machine has no vmx/svm
    assert (web["cpus"], web["memory_mib"], web["disk_gib"]) == (2, 512, 2.0)
    assert web["image"] == "tiny" and web["id"].startswith("i-")
    assert procs.is_alive(web["pid"])
    phases = {p["event"]: p["at"] for p in web["boot"]["phases"]}
    assert phases.pop("memory_restored") is None  # a cold boot, not a restore
    assert phases.pop("identity_refreshed") is None  # nor a clone: no one else's identity
    assert phases.pop("taken_from_pool") is None  # its own QEMU, started for it
    assert None not in phases.values()
    order = [
        phases[e]
        for e in ("process_started", "running", "kernel_started", "init_started", "agent_ready")
    ]
    assert order == sorted(order)
    assert 0 < web["boot"]["total_s"] < 120


def test_guest_sees_its_hardware(web, service):
    assert service.exec("web1", "nproc").strip() == "2"
    meminfo = service.exec("web1", "cat", "/proc/meminfo")
    mem_kib = int(
        next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal"))
    )
    # The kernel keeps some memory for itself: MemTotal is a bit under the 512 MiB given.
    assert 400 * 1024 < mem_kib <= 512 * 1024
    sectors = int(service.exec("web1", "cat", "/sys/block/vda/size"))
    assert sectors * 512 == 2 * 1024**3
    assert service.exec("web1", "hostname").strip() == "web1"


def test_qemu_runs_sandboxed(web, service):
    pid = json.loads(service.cli("show", "web1", "-o", "json").stdout)["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "Seccomp:\t2" in status  # filter mode: -sandbox on
    argv = procs.cmdline(pid)
    assert argv[argv.index("-name") + 1].startswith("guest=web1")
    assert os.getsid(pid) == pid  # its own session: detached from the service
    assert "NoNewPrivs:\t1" in status


def _uid(pid: int) -> int:
    line = next(
        x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:")
    )
    real, effective, saved, fs = (int(v) for v in line.split()[1:])
    assert real == effective == saved == fs  # no way back to another identity
    return real


def _top_layer(pid: int) -> Path:
    argv = procs.cmdline(pid)
    specs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    return Path(next(s["filename"] for s in specs if s.get("node-name") == "root-file"))


def _open_as(uid: int, path: Path) -> int:
    """0 if a process with this uid (and no other privilege) can open the file, else errno."""
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def test_each_vm_runs_as_its_own_user(web, service):
    """A QEMU broken into by its guest holds a uid of its own, which opens its own disk only."""
    import errno

    service.cli("launch", "tiny", "--name", "web2", "--memory", "256M")
    try:
        shown = {
            n: json.loads(service.cli("show", n, "-o", "json").stdout) for n in ("web1", "web2")
        }
        pid1, pid2 = shown["web1"]["pid"], shown["web2"]["pid"]
        uid1, uid2 = _uid(pid1), _uid(pid2)
        assert 0 not in (uid1, uid2) and uid1 != uid2
        top1, top2 = _top_layer(pid1), _top_layer(pid2)
        st = top1.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid1, 0o600)
        assert _open_as(uid1, top1) == 0  # the control: its own disk opens
        assert _open_as(uid1, top2) == errno.EACCES  # the other VM's disk does not
        assert _open_as(uid2, top1) == errno.EACCES
        qmp2 = Path(procs.cmdline(pid2)[procs.cmdline(pid2).index("-qmp") + 1].split(",")[0][5:])
        assert _open_as(uid1, qmp2) == errno.EACCES  # nor its control socket's folder
        # The home is crossable (0711) for them, but what is the service's stays root's: the
        # admin socket (root is superuser there) and the store (users, token hashes).
        for own in (service.home / "gureum.sock", service.home / "gureum.db"):
            st = own.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), own
        assert _open_as(uid1, service.home / "gureum.db") == errno.EACCES
        assert service.exec("web2", "echo", "ok").strip() == "ok"  # and both still work
    finally:
        service.cli("delete", "web2", "--force", check=False)


def test_interactive_console_in_a_terminal(web, service):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "gureum.cli.main", "console", "web1"],
                   service.env)  # fmt: skip
    seen = b""

    def read_until(needle: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        assert needle in seen, seen[-500:]

    try:
        read_until(b"Detach with Ctrl-]")
        os.write(fd, b"echo tty-$((40+2))\r")
        read_until(b"tty-42")
        os.write(fd, b"\x1d")  # Ctrl-]
        read_until(b"Detached.")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_exec_streams_and_exit_codes(web, service):
    res = service.cli(
        "exec", "web1", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False
    )
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    res = service.cli("exec", "-i", "web1", "--", "sh", "-c", "tr a-z A-Z", input=b"hello\n")
    assert res.stdout == "HELLO\n"
    res = service.cli("exec", "web1", "--", "/no/such/program", check=False)
    assert res.returncode == 127 and "cannot run '/no/such/program'" in res.stderr
    assert "[command-not-found]" in res.stderr  # as a shell exits (issue 11, item 4)


def test_list_and_show(web, service):
    items = json.loads(service.cli("list", "-o", "json").stdout)
    assert [i["name"] for i in items if i["name"] == "web1"] == ["web1"]
    table = service.cli("list").stdout
    assert "web1" in table and "running" in table and "NAME" in table and "TYPE" in table
    shown = json.loads(service.cli("show", "web1", "-o", "json").stdout)
    for key in ("name", "id", "state", "image", "cpus", "memory_mib", "disk_gib", "accel", "pid",
                "created_at", "boot", "mac", "generation_id"):  # fmt: skip
        assert key in shown
    assert shown["type"] == "vm"
    assert shown["host"]["rss_bytes"] > 10 * 1024 * 1024
    assert "agent_ready" in service.cli("show", "web1").stdout


def test_console(web, service):
    res = service.cli("console", "web1", input=b"echo console-$((6*7))\n")
    assert "console-42" in res.stdout
    log = service.cli("console", "web1", "--log").stdout
    assert "gureum-init: ready" in log and "Linux version" in log
    # The session is audited: who, which VM, how many bytes typed; never what was typed.
    entries = json.loads(service.cli("audit", "list", "-o", "json").stdout)
    session = next(
        e for e in entries if e["action"].startswith("CONSOLE ") and e["target"] == "web1"
    )
    assert session["detail"]["input_bytes"] == len(b"echo console-$((6*7))\n")
    assert "console-" not in json.dumps(session)


def test_data_survives_stop_and_start(web, service):
    service.exec("web1", "sh", "-c", "echo precious > /root/data.txt && sync")
    pid = json.loads(service.cli("show", "web1", "-o", "json").stdout)["pid"]
    stopped = service.cli("stop", "web1")
    assert "stopped" in stopped.stdout
    shown = json.loads(service.cli("show", "web1", "-o", "json").stdout)
    assert shown["state"] == "stopped" and shown["pid"] is None
    assert not procs.is_alive(pid)
    res = service.cli("exec", "web1", "--", "true", check=False)
    assert res.returncode == ExitCode.REFUSED and "it is stopped" in res.stderr
    started = json.loads(service.cli("start", "web1", "-o", "json").stdout)
    assert started["state"] == "running" and started["pid"] != pid
    assert service.exec("web1", "cat", "/root/data.txt") == "precious\n"


def test_restart_gives_a_new_boot(web, service):
    service.exec("web1", "sh", "-c", "echo precious > /root/data.txt && sync")
    before = json.loads(service.cli("show", "web1", "-o", "json").stdout)
    after = json.loads(service.cli("restart", "web1", "-o", "json").stdout)
    assert after["state"] == "running" and after["pid"] != before["pid"]
    assert after["boot"]["phases"][0]["at"] > before["boot"]["phases"][0]["at"]
    assert service.exec("web1", "cat", "/root/data.txt") == "precious\n"


def test_guest_poweroff_is_a_stop_not_a_crash(service):
    service.launch("selfstop")
    with service.client() as c:
        # Detached and a moment later, so the exec's own answer is not cut off by the power-off.
        c.exec("selfstop", ["sh", "-c", "(sleep 0.5; poweroff) >/dev/null 2>&1 &"])
        inst = wait_for(lambda: (i := c.instance("selfstop"))["state"] != "running" and i, 30,
                        what="selfstop no longer running")  # fmt: skip
        assert inst["state"] == "stopped", inst
        c.delete("selfstop")


def test_overlay_is_thin(web, service):
    shown = json.loads(service.cli("show", "web1", "-o", "json").stdout)
    # A 2 GiB disk whose data lives in the image: the VM's own file holds only its writes.
    assert shown["host"]["disk_allocated_bytes"] < 64 * 1024 * 1024
