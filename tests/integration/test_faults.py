"""Faults: a VM killed, the service killed, leftovers, a full host. Each VM's fate is its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gureum.cli.main import ExitCode
from gureum.client.client import ApiError
from gureum.host.capacity import host_memory_mib
from gureum.sys import procs
from tests.integration.conftest import Service, new_home, running_service
from tests.waiting import wait_for

pytestmark = pytest.mark.vm

GUEST_LIMIT_MIB = 1100  # the host "has" this much for guests in this module


@pytest.fixture(scope="module")
def small_host():
    reserve = host_memory_mib() - GUEST_LIMIT_MIB
    env = {"GUREUM_MEMORY_RESERVE_MIB": str(reserve), "GUREUM_STOP_TIMEOUT": "3"}
    with running_service(env) as svc:
        svc.launch("alpha")
        svc.launch("beta")
        yield svc


@pytest.fixture(autouse=True)
def alpha_and_beta_running(request):
    """Each test of small_host starts with alpha and beta running (the ones still there)."""
    if "small_host" in request.fixturenames:
        request.getfixturevalue("small_host").running("alpha", "beta")


def state_of(svc, name):
    with svc.client() as c:
        return c.instance(name)


def wait_state(svc, name, want, timeout=10.0):
    inst = wait_for(lambda: (i := state_of(svc, name))["state"] == want and i, timeout,
                    interval=0.05, what=f"{name} {want}")  # fmt: skip
    return inst, time.monotonic()


def test_admission_refuses_what_does_not_fit(small_host):
    # alpha and beta hold 2 x 256 MiB of the 1100: 588 left.
    before = sorted(small_host.qemu_pids())
    res = small_host.cli("launch", "tiny", "--name", "gamma", "--memory", "640M", check=False)
    assert res.returncode == ExitCode.REFUSED and "[insufficient-capacity]" in res.stderr
    assert "not enough host memory" in res.stderr
    assert sorted(small_host.qemu_pids()) == before
    assert "gamma" not in small_host.cli("list").stdout
    host = json.loads(small_host.cli("host", "-o", "json").stdout)
    assert host["committed"]["memory_mib"] == 512
    assert host["capacity"]["memory_limit_mib"] == GUEST_LIMIT_MIB


def test_disk_full_during_a_memory_snapshot(small_host):
    snaps = small_host.home / "snapshots"
    assert not list(snaps.iterdir())  # nothing to hide under the small filesystem
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "gureum-test-full", str(snaps)],
                   check=True)  # fmt: skip
    try:
        res = small_host.cli("snapshot", "create", "alpha", "full", "--memory", check=False)
        assert res.returncode == 1 and "No space left" in res.stderr, res.stderr
        assert small_host.exec("alpha", "echo", "alive") == "alive\n"  # running, not paused
        assert json.loads(small_host.cli("snapshot", "list", "alpha", "-o", "json").stdout) == []
        assert not list(snaps.iterdir())  # the partial memory image is gone
    finally:
        subprocess.run(["umount", str(snaps)], check=True)


def test_export_cut_short_leaves_nothing(small_host, tmp_path):
    # 96 MiB of random bytes in guest memory (tmpfs): the archive cannot be sparse or small,
    # so the stream is still flowing when the CLI is interrupted, however fast the host.
    small_host.exec("alpha", "dd", "if=/dev/urandom", "of=/tmp/fill", "bs=1M", "count=96")
    target = tmp_path / "alpha.gbk"
    # The CLI at the lowest priority: on a loaded machine this test, polling, must see the
    # partial file and interrupt before the CLI can write the whole archive (CI once saw the
    # export finish first).
    cli = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-m", "gureum.cli.main", "backup", "export",
         "alpha", str(target), "--memory"],
        env=small_host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # Ctrl-C as a terminal sends it: a run started in the background (`cmd &` without job
        # control) ignores SIGINT, and a child would inherit that and never be interrupted.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    partial = tmp_path / "alpha.gbk.partial"
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, 60, interval=0.002,
             what="the export under way")  # fmt: skip
    cli.send_signal(signal.SIGINT)
    cli.wait(30)
    assert not target.exists() and not partial.exists()
    scratch = small_host.home / "scratch"
    wait_for(lambda: not list(scratch.iterdir()), 10, interval=0.05, what="scratch emptied")
    assert json.loads(small_host.cli("snapshot", "list", "alpha", "-o", "json").stdout) == []
    assert small_host.exec("alpha", "echo", "alive") == "alive\n"
    small_host.exec("alpha", "rm", "/tmp/fill")


def test_backup_restores_into_a_fresh_home(small_host, tmp_path):
    """An archive carries what another gureum needs: this home has never built an image."""
    archive = tmp_path / "alpha.gbk"
    small_host.exec("alpha", "sh", "-c", "echo travelled > /root/note && sync")
    small_host.cli("backup", "export", "alpha", str(archive))
    fresh = Service(new_home())
    try:
        fresh.start()
        assert json.loads(fresh.cli("image", "list", "-o", "json").stdout) == []
        fresh.cli("backup", "import", str(archive), "--name", "visitor")
        fresh.cli("start", "visitor")
        assert fresh.exec("visitor", "cat", "/root/note") == "travelled\n"
        assert fresh.exec("visitor", "hostname").strip() == "visitor"
    finally:
        fresh.cleanup()


def test_one_vm_killed_leaves_the_rest_running(small_host):
    alpha = state_of(small_host, "alpha")
    killed_at = time.monotonic()
    os.kill(alpha["pid"], signal.SIGKILL)
    inst, seen_at = wait_state(small_host, "alpha", "crashed", timeout=5)
    assert seen_at - killed_at < 5
    assert "killed by signal 9" in inst["state_reason"]
    assert small_host.proc.poll() is None  # the service is fine
    assert small_host.exec("beta", "echo", "still here") == "still here\n"
    # A crashed VM can be started again, with its disk as it was.
    small_host.cli("start", "alpha")
    assert small_host.exec("alpha", "hostname").strip() == "alpha"


def test_service_killed_and_restarted_keeps_vms(small_host):
    pids = {n: state_of(small_host, n)["pid"] for n in ("alpha", "beta")}
    small_host.exec("alpha", "sh", "-c", "echo before > /root/mark && sync")
    small_host.kill(signal.SIGKILL)
    assert all(procs.is_alive(p) for p in pids.values())  # VMs outlive the service
    small_host.start()
    for name, pid in pids.items():
        inst = state_of(small_host, name)
        assert (inst["state"], inst["pid"]) == ("running", pid)
    assert small_host.exec("alpha", "cat", "/root/mark") == "before\n"
    assert small_host.exec("beta", "nproc").strip() == "1"
    # ...and still controllable: stop and start through the re-adopted monitor.
    small_host.cli("stop", "beta")
    assert state_of(small_host, "beta")["state"] == "stopped"
    assert not procs.is_alive(pids["beta"])
    small_host.cli("start", "beta")
    assert state_of(small_host, "beta")["state"] == "running"


def test_crash_while_service_down_is_noticed(small_host):
    beta = state_of(small_host, "beta")
    small_host.kill(signal.SIGKILL)
    os.kill(beta["pid"], signal.SIGKILL)
    small_host.start()
    inst = state_of(small_host, "beta")
    assert inst["state"] == "crashed" and "service was down" in inst["state_reason"]
    small_host.cli("start", "beta")


def test_service_killed_mid_boot_finishes_the_boot(small_host):
    with small_host.client() as c:
        res = c.launch("gamma", "tiny")
        for item in c.follow(res["operation"]["id"], timeout=60):
            if "progress" in item and "QEMU running as pid" in item["progress"]["message"]:
                break
    small_host.kill(signal.SIGKILL)
    small_host.start()
    inst, _ = wait_state(small_host, "gamma", "running", timeout=120)
    phases = {p["event"]: p["at"] for p in inst["boot"]["phases"]}
    assert phases["agent_ready"] is not None  # recorded after adoption
    assert small_host.exec("gamma", "hostname").strip() == "gamma"
    with small_host.client() as c:
        kinds = [
            o["kind"] for o in c.request("GET", "/v1/operations", params={"target": inst["id"]})
        ]
        assert "adopt" in kinds
        c.delete("gamma", force=True)


def test_restored_vm_survives_a_service_restart(small_host):
    small_host.cli("snapshot", "create", "beta", "keep", "--memory")
    small_host.cli("snapshot", "restore", "beta", "keep")
    pid = state_of(small_host, "beta")["pid"]
    small_host.kill(signal.SIGKILL)
    small_host.start()
    inst = state_of(small_host, "beta")
    assert (inst["state"], inst["pid"]) == ("running", pid)
    assert small_host.exec("beta", "hostname").strip() == "beta"


@pytest.fixture
def kept_snapshot(small_host):
    """keep, a memory snapshot of beta (as test_restored_vm_survives_a_service_restart takes)."""
    listed = json.loads(small_host.cli("snapshot", "list", "beta", "-o", "json").stdout)
    if "keep" not in [s["name"] for s in listed]:
        small_host.cli("snapshot", "create", "beta", "keep", "--memory")
    return "keep"


def test_snapshot_cut_short_by_a_service_kill(small_host, kept_snapshot):
    with small_host.client() as c:
        op = c.snapshot("beta", "cut", memory=True)
        for item in c.follow(op["id"], timeout=60):
            if "progress" in item and "saving memory" in item["progress"]["message"]:
                break
    small_host.kill(signal.SIGKILL)
    small_host.start()
    inst = state_of(small_host, "beta")
    assert inst["state"] == "running"
    assert small_host.exec("beta", "echo", "alive") == "alive\n"  # resumed, not left paused
    names = [
        s["name"]
        for s in json.loads(small_host.cli("snapshot", "list", "beta", "-o", "json").stdout)
    ]
    assert names == ["keep"]  # the cut one is not listed; the earlier one is intact
    snaps = small_host.home / "snapshots"
    assert not [p for p in snaps.iterdir() if p.name.endswith(".partial")]
    assert not [
        p
        for p in small_host.qemu_pids()
        if p not in (inst["pid"], state_of(small_host, "alpha")["pid"])
    ]
    small_host.cli("snapshot", "restore", "beta", "keep")
    assert small_host.exec("beta", "hostname").strip() == "beta"
    small_host.cli("snapshot", "delete", "beta", "keep")


def test_leftovers_are_removed_at_start(small_host):
    small_host.stop()
    ghost = "i-0000deadbeef"
    (small_host.home / "instances" / ghost).mkdir()
    (small_host.home / "instances" / ghost / "root.qcow2").write_bytes(b"junk")
    rundir = small_host.home / "run" / ghost
    rundir.mkdir()
    stray = subprocess.Popen(
        ["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults", "-machine", "none",
         "-qmp", f"unix:{rundir}/qmp.sock,server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((rundir / "qmp.sock").exists, 10, interval=0.02, what="the stray QEMU's socket")
        small_host.start()
        stray.wait(10)  # the reconciler killed it
        assert not (small_host.home / "instances" / ghost).exists()
        assert not rundir.exists()
        assert {i["name"] for i in json.loads(small_host.cli("list", "-o", "json").stdout)} == {
            "alpha",
            "beta",
        }
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_stop_falls_back_when_the_guest_ignores_acpi(small_host):
    small_host.exec("beta", "killall", "acpid")  # the power button now does nothing
    with small_host.client() as c:
        op = c.wait(c.action("beta", "stop")["id"], timeout=60)
        assert op["result"]["how"] == "quit"
        assert c.instance("beta")["state"] == "stopped"
        c.wait(c.action("beta", "start")["id"], timeout=120)
        assert c.instance("beta")["state"] == "running"


def test_deleted_vm_leaves_nothing(small_host):
    alpha = state_of(small_host, "alpha")
    with small_host.client() as c:
        with pytest.raises(ApiError) as exc:
            c.delete("alpha")
        assert exc.value.code == "invalid-state"
        c.delete("alpha", force=True)
    assert not procs.is_alive(alpha["pid"])
    assert not (small_host.home / "instances" / alpha["id"]).exists()
    assert not (small_host.home / "run" / alpha["id"]).exists()


def fill(folder, leave_bytes: int):
    """A file taking all but ``leave_bytes`` of the filesystem under ``folder``."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    held = filler.stat().st_size if filler.exists() else 0
    size = st.f_bavail * st.f_frsize - leave_bytes + held
    subprocess.run(["fallocate", "-l", str(max(size, 0)), str(filler)], check=True)
    return filler


def test_a_full_host_disk_pauses_the_vm_until_there_is_room():
    """QEMU stops a guest whose disk write hits ENOSPC: shown as paused with the reason (not
    running), resumed by itself once room is made, the guest's write then completes; a
    snapshot that fails for lack of room leaves no layer behind."""
    home = new_home()
    disks = home / "disks"
    disks.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m", "gureum-test-full", str(disks)],
                   check=True)  # fmt: skip
    svc = Service(home)
    try:
        svc.start()
        svc.cli("image", "build", "tiny", timeout=900)
        svc.launch("full")
        # Stopped, so that no write of the guest's (its agent, its filesystem's own) can pause it
        # before the snapshot is asked for: on a slow host one once did, and the snapshot was
        # refused for the VM's state instead of failing for the lack of room.
        svc.cli("stop", "full")
        layers = sorted(p.name for p in disks.iterdir())
        filler = fill(disks, 64 << 10)  # too little for a new layer's qcow2 metadata
        res = svc.cli("snapshot", "create", "full", "nospace", check=False)
        assert res.returncode == 1, res.stderr
        assert sorted(p.name for p in disks.iterdir() if p != filler) == layers
        assert json.loads(svc.cli("snapshot", "list", "full", "-o", "json").stdout) == []
        filler.unlink()
        svc.cli("start", "full")
        wait_state(svc, "full", "running", timeout=30)
        filler = fill(disks, 16 << 20)
        svc.exec("full", "/bin/sh", "-c",
                 "(dd if=/dev/urandom of=/big bs=1M count=64 && sync && echo ok >/done) "
                 ">/dev/null 2>&1 &")  # fmt: skip
        inst, _ = wait_state(svc, "full", "paused", timeout=120)
        assert "no space left" in inst["state_reason"], inst
        listed = svc.cli("list").stdout
        assert any(line.split()[:3] == ["full", "vm", "paused"] for line in listed.splitlines())
        filler.unlink()
        wait_state(svc, "full", "running", timeout=30)

        def done():
            with svc.client() as c:
                out = c.exec("full", ["cat", "/done"])
            return out["exit_code"] == 0 and out

        assert wait_for(done, 120, interval=1, what="the guest's write done")["stdout"] == b"ok\n"
    finally:
        svc.cleanup()
        subprocess.run(["umount", str(disks)], check=False)
        subprocess.run(["rm", "-rf", str(home)], check=False)
