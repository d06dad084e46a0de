"""Snapshots, restore, clone, backups and resize, checked from inside the guests.

The tests share rec1 (the module's VM); what one needs beyond it (a snapshot, a clone, the
counter running) it asks of a fixture or helper that makes it unless an earlier test left it, so
each test also passes when run by itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gureum.cli.main import ExitCode
from gureum.client.client import ApiError
from gureum.engine.qemu import process
from gureum.sys import procs
from tests.waiting import wait_for

pytestmark = pytest.mark.vm

# A process that lives only in guest memory (/tmp is tmpfs): ten counts a second. Started unless
# one runs already (its pid file, in /tmp too, goes with a reboot and comes back with a restore).
COUNTER = (
    "[ -f /tmp/counter.pid ] && kill -0 $(cat /tmp/counter.pid) 2>/dev/null || "
    "{ (i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) "
    ">/dev/null 2>&1 & echo $! > /tmp/counter.pid; }"
)


def sh(service, name, script):
    return service.exec(name, "sh", "-c", script)


def show(service, name):
    return json.loads(service.cli("show", name, "-o", "json").stdout)


def wait_op(service, op):
    with service.client() as c:
        return c.wait(op["id"], timeout=240)


def counter(service, name) -> int:
    return int(sh(service, name, "cat /tmp/counter"))


def counter_past(service, name, value: int) -> int:
    """The guest's counter once it is past ``value``: it runs."""
    return wait_for(lambda: (n := counter(service, name)) > value and n, 30,
                    what=f"the counter in {name} past {value}")  # fmt: skip


def snapshot_names(service, name) -> list[str]:
    return [
        s["name"] for s in json.loads(service.cli("snapshot", "list", name, "-o", "json").stdout)
    ]


def instance_names(service) -> set[str]:
    with service.client() as c:
        return {i["name"] for i in c.instances()}


def ensure_snapshot(service, vm, name, *, memory=False) -> str:
    """rec1's snapshot ``name``: taken now unless an earlier test took it (a memory one with
    the counter running)."""
    if name not in snapshot_names(service, vm):
        if memory:
            sh(service, vm, COUNTER)
        service.cli("snapshot", "create", vm, name, *(["--memory"] if memory else []))
    return name


def ensure_clone(service, vm, name, snapshot, *, memory=False) -> str:
    if name not in instance_names(service):
        ensure_snapshot(service, vm, snapshot, memory=memory)
        service.cli("clone", f"{vm}/{snapshot}", name)
    return name


@pytest.fixture(scope="module")
def vm(service):
    """rec1 with 8 MiB of random data on its disk and a counter running in memory."""
    service.launch("rec1")
    sh(service, "rec1", "head -c 8388608 /dev/urandom > /root/blob && sync")
    sh(service, "rec1", COUNTER)
    yield "rec1"
    for name in ("rec1", "rec2", "rec3", "rec4", "rec1-copy"):
        service.cli("delete", name, "--force", check=False)


@pytest.fixture(autouse=True)
def rec1_running(request):
    """Each test of rec1 starts with it running, whatever an earlier test left."""
    if "vm" in request.fixturenames:
        request.getfixturevalue("vm")
        request.getfixturevalue("service").running("rec1")


@pytest.fixture
def disk_snapshot(service, vm):
    """s1, a disk snapshot of rec1 (as test_disk_snapshot_restore_gives_back_the_data takes)."""
    return ensure_snapshot(service, vm, "s1")


@pytest.fixture
def memory_snapshot(service, vm):
    """m1, a memory snapshot of rec1 with its counter running."""
    return ensure_snapshot(service, vm, "m1", memory=True)


@pytest.fixture
def memory_clone(service, vm):
    """rec2, cloned from m1 (as test_clone_from_memory_snapshot_is_a_new_machine does)."""
    return ensure_clone(service, vm, "rec2", "m1", memory=True)


@pytest.fixture
def disk_clone(service, vm):
    """rec3, cloned from s1 (as test_clone_from_disk_snapshot_boots_with_the_data does)."""
    return ensure_clone(service, vm, "rec3", "s1")


def blob_sum(service, name):
    return sh(service, name, "sha256sum /root/blob").split()[0]


def test_disk_snapshot_restore_gives_back_the_data(service, vm):
    original = blob_sum(service, vm)
    out = json.loads(service.cli("snapshot", "create", vm, "s1", "-o", "json").stdout)
    assert out["snapshot"]["consistency"] == "fsfreeze"  # quiesced through the agent
    assert out["snapshot"]["memory"] is False
    sh(service, vm, "head -c 8388608 /dev/urandom > /root/blob && sync")
    assert blob_sum(service, vm) != original
    before = show(service, vm)
    service.cli("snapshot", "restore", vm, "s1", "--restart")
    after = show(service, vm)
    assert after["state"] == "running"
    assert blob_sum(service, vm) == original
    assert after["generation_id"] != before["generation_id"]  # a new generation


def test_memory_snapshot_resumes_a_running_process(service, vm):
    sh(service, vm, COUNTER)  # unless it runs (a restore that rebooted the VM stopped it)
    machine_id = sh(service, vm, "cat /etc/machine-id").strip()
    out = json.loads(service.cli("snapshot", "create", vm, "m1", "--memory", "-o", "json").stdout)
    assert out["snapshot"]["memory"] and out["snapshot"]["consistency"] == "paused"
    at_snapshot = counter(service, vm)
    # Far enough past the snapshot (1.5 s of counting) that the restored VM, counting again
    # from where the snapshot was, cannot have caught up by the time it is read.
    later = counter_past(service, vm, at_snapshot + 15)
    gen_before = show(service, vm)["generation_id"]
    res = json.loads(service.cli("snapshot", "restore", vm, "m1", "-o", "json").stdout)
    assert res["identity_refreshed"]["generation_id"] != gen_before
    resumed = int(sh(service, vm, "cat /tmp/counter"))
    # Back at the moment of the snapshot (the counter lived only in memory), and still counting.
    assert at_snapshot <= resumed < later
    counter_past(service, vm, resumed)
    boot = show(service, vm)["boot"]
    phases = {p["event"]: p["at"] for p in boot["phases"]}
    assert phases["memory_restored"] is not None and phases["kernel_started"] is None
    assert sh(service, vm, "cat /etc/machine-id").strip() != machine_id  # told it was restored


def test_clone_from_memory_snapshot_is_a_new_machine(service, vm, memory_snapshot):
    source = show(service, vm)
    res = json.loads(service.cli("clone", f"{vm}/m1", "rec2", "-o", "json").stdout)
    clone = res["instance"]
    assert clone["state"] == "running" and clone["id"] != source["id"]
    ident = res["identity_refreshed"]
    assert ident["hostname"] == "rec2" and clone["mac"] != source["mac"]
    assert ident["macs"] == [[source["mac"], clone["mac"]]]  # old -> new, set in the guest
    assert ident["generation_id"] == clone["generation_id"] != source["generation_id"]
    # What the guest itself reports:
    assert sh(service, "rec2", "hostname").strip() == "rec2"
    assert sh(service, "rec2", "cat /sys/class/net/eth0/address").strip() == clone["mac"]
    assert sh(service, "rec2", "cat /etc/machine-id").strip() == ident["machine_id"]
    assert sh(service, "rec2", "cat /etc/machine-id") != sh(service, vm, "cat /etc/machine-id")
    assert blob_sum(service, "rec2") == blob_sum(service, vm)
    # The counter process came along in memory, and runs.
    counter_past(service, "rec2", counter(service, "rec2"))
    # It shares no writable file with its source: a write in one is not seen in the other.
    sh(service, "rec2", "echo clone-only > /root/mine && sync")
    assert "No such file" in service.cli("exec", vm, "--", "cat", "/root/mine", check=False).stderr


def ram_mapping(pid: int) -> dict[str, int]:
    """The smaps fields (kB) of a QEMU's guest RAM mapping of a snapshot's ram-mem0, which it
    maps as the host's sealed copy (``host/sealed_ram.py``), never as the saved file."""
    fields: dict[str, int] = {}
    current = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef":
            current = "/memfd:gureum-ram-mem0" in line
        elif current and line.split(":")[0] in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty"):
            key, value = line.split(":")
            fields[key] = fields.get(key, 0) + int(value.split()[0])
    return fields


def test_clones_share_unchanged_memory_pages(service, vm, memory_clone):
    """Two VMs started from one memory snapshot map one sealed copy of its RAM privately: the
    pages neither has written are the same pages (shown as Shared_*), so each is charged only a
    share (Pss < Rss)."""
    res = json.loads(service.cli("clone", f"{vm}/m1", "rec4", "-o", "json").stdout)
    try:
        pid_a, pid_b = show(service, memory_clone)["pid"], res["instance"]["pid"]
        a, b = ram_mapping(pid_a), ram_mapping(pid_b)
        assert a["Rss"] > 10 * 1024 and b["Rss"] > 10 * 1024
        for m in (a, b):
            assert m["Shared_Clean"] + m["Shared_Dirty"] > 10 * 1024
        assert a["Pss"] < a["Rss"]  # shared pages are split between the clones
    finally:
        service.cli("delete", "rec4", "--force")


def test_clone_from_disk_snapshot_boots_with_the_data(service, vm, disk_snapshot):
    res = json.loads(service.cli("clone", f"{vm}/s1", "rec3", "-o", "json").stdout)
    assert res["instance"]["state"] == "running"
    assert sh(service, "rec3", "hostname").strip() == "rec3"
    assert show(service, "rec3")["mac"] != show(service, vm)["mac"]
    assert sh(service, "rec3", "test -s /root/blob && echo yes").strip() == "yes"


def test_deleting_a_snapshot_a_clone_uses_keeps_its_data(
    service, vm, disk_snapshot, memory_snapshot, disk_clone, memory_clone
):
    sh(service, memory_clone, "echo clone-only > /root/mine && sync")
    listed = json.loads(service.cli("snapshot", "list", vm, "-o", "json").stdout)
    s1 = next(s for s in listed if s["name"] == "s1")
    assert set(s1["depended_on_by"]) >= {"rec3"}
    gone = json.loads(service.cli("snapshot", "delete", vm, "s1", "-o", "json").stdout)
    assert "rec3" in gone["disk_data_kept_for"]
    assert [
        s["name"] for s in json.loads(service.cli("snapshot", "list", vm, "-o", "json").stdout)
    ] == ["m1"]
    # The clone's chain is whole: it still cold-boots and reads its data.
    service.cli("restart", "rec3")
    assert sh(service, "rec3", "test -s /root/blob && echo yes").strip() == "yes"
    # Even with the source VM's snapshots all gone, and a restart of the clone from memory's.
    service.cli("snapshot", "delete", vm, "m1")
    service.cli("restart", "rec2")
    assert sh(service, "rec2", "cat /root/mine").strip() == "clone-only"


def _acl(path: Path) -> str:
    return subprocess.run(["getfacl", "-n", "-p", str(path)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_a_deleted_clone_keeps_no_grant(service, vm, disk_clone):
    """A clone's QEMU reads the layers it shares through an ACL entry for its own uid; the
    entry goes with the clone."""
    pid = show(service, disk_clone)["pid"]
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = int(next(x for x in status if x.startswith("Uid:")).split()[1])
    argv = procs.cmdline(pid)
    disk = next(json.loads(argv[i + 1])["filename"] for i, a in enumerate(argv)
                if a == "-blockdev" and '"root-file"' in argv[i + 1])  # fmt: skip
    info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", disk],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    shared = [Path(e["filename"]) for e in json.loads(info)[1:] if "/disks/" in e["filename"]]
    assert shared and all(f"user:{uid}:r" in _acl(p) for p in shared)
    service.cli("delete", "rec3", "--force")
    kept = [p for p in shared if p.exists()]
    assert kept  # the source VM still builds on them
    assert all(f"user:{uid}:" not in _acl(p) for p in kept)


def test_snapshot_errors(service, vm):
    res = service.cli("snapshot", "create", vm, "Bad Name", check=False)
    assert res.returncode == 1 and "[invalid-input]" in res.stderr
    res = service.cli("snapshot", "restore", vm, "nope", check=False)
    assert res.returncode == ExitCode.NOT_FOUND and "[not-found]" in res.stderr
    service.cli("snapshot", "create", vm, "dup")
    res = service.cli("snapshot", "create", vm, "dup", check=False)
    assert res.returncode == ExitCode.REFUSED and "[conflict]" in res.stderr
    res = service.cli("snapshot", "create", vm, "gureum-x", check=False)
    assert res.returncode == 1 and "reserved" in res.stderr
    res = service.cli("clone", f"{vm}/dup", "rec1", check=False)
    assert res.returncode == ExitCode.REFUSED and "[conflict]" in res.stderr
    service.cli("snapshot", "delete", vm, "dup")


def test_export_delete_import_same_data(service, vm, tmp_path: Path):
    service.launch("rec4")
    sh(service, "rec4", "head -c 4194304 /dev/urandom > /root/blob && sync")
    original = blob_sum(service, "rec4")
    archive = tmp_path / "rec4.gbk"
    out = service.cli("backup", "export", "rec4", str(archive))
    assert "exported" in out.stdout and archive.stat().st_size > 1024 * 1024
    service.cli("delete", "rec4", "--force")
    imported = json.loads(
        service.cli("backup", "import", str(archive), "--name", "rec4", "-o", "json").stdout
    )
    assert imported["state"] == "stopped"
    service.cli("start", "rec4")
    assert blob_sum(service, "rec4") == original
    assert sh(service, "rec4", "hostname").strip() == "rec4"


def test_memory_backup_resumes_elsewhere(service, vm, tmp_path: Path):
    archive = tmp_path / "rec1-mem.gbk"
    sh(service, vm, COUNTER)  # unless it runs: the process to come along
    sh(service, vm, "echo before-export > /tmp/marker")  # /tmp is memory (tmpfs)
    service.cli("backup", "export", vm, str(archive), "--memory")
    sh(service, vm, "echo after-export > /tmp/marker")
    service.cli("backup", "import", str(archive), "--name", "rec1-copy")
    service.cli("snapshot", "restore", "rec1-copy", "backup")
    assert sh(service, "rec1-copy", "cat /tmp/marker").strip() == "before-export"
    assert sh(service, "rec1-copy", "hostname").strip() == "rec1-copy"
    copy_mac = show(service, "rec1-copy")["mac"]
    assert copy_mac != show(service, vm)["mac"]
    assert sh(service, "rec1-copy", "cat /sys/class/net/eth0/address").strip() == copy_mac
    counter_past(service, "rec1-copy", counter(service, "rec1-copy"))  # the process came along
    assert blob_sum(service, "rec1-copy") == blob_sum(service, vm)
    res = service.cli("backup", "verify", str(archive))
    assert res.stdout.startswith("PASS") and "resumed from memory" in res.stdout


def _nothing_created(service, before):
    with service.client() as c:
        assert sorted(i["name"] for i in c.instances()) == before[0]
    assert sorted(p.name for p in (service.home / "disks").iterdir()) == before[1]
    assert sorted(p.name for p in (service.home / "snapshots").iterdir()) == before[2]


@pytest.mark.parametrize("damage", ["truncated", "tampered", "not-an-archive"])
def test_damaged_archives_are_refused(service, vm, tmp_path: Path, damage):
    good = tmp_path / "good.gbk"
    service.cli("backup", "export", vm, str(good))
    data = bytearray(good.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "tampered":
        data[len(data) // 3] ^= 0xFF  # one bit-flip inside the disk image
    else:
        data = bytearray(b"hello, this is not a backup\n" * 1000)
    bad = tmp_path / "bad.gbk"
    bad.write_bytes(bytes(data))
    with service.client() as c:
        before = (sorted(i["name"] for i in c.instances()),
                  sorted(p.name for p in (service.home / "disks").iterdir()),
                  sorted(p.name for p in (service.home / "snapshots").iterdir()))  # fmt: skip
    res = service.cli("backup", "import", str(bad), "--name", "damaged", check=False)
    assert res.returncode == 1 and "[invalid-archive]" in res.stderr
    words = {"truncated": "truncated", "tampered": "checksum", "not-an-archive": "not a"}[damage]
    assert words in res.stderr
    _nothing_created(service, before)
    verify = service.cli("backup", "verify", str(bad), check=False)
    assert verify.returncode == 1 and verify.stdout.startswith("FAIL")
    _nothing_created(service, before)


def test_resize_live_seen_by_the_guest(service, vm):
    assert sh(service, vm, "nproc").strip() == "1"
    res = json.loads(service.cli("resize", vm, "--cpus", "3", "--memory", "512M", "--disk", "1G",
                                 "-o", "json").stdout)  # fmt: skip
    assert res["applied"] == {"cpus": "live", "memory": "live", "disk": "live"}
    assert sh(service, vm, "nproc").strip() == "3"
    mem_kib = int(sh(service, vm, "grep MemTotal /proc/meminfo").split()[1])
    assert mem_kib > 400 * 1024  # was ~210 MiB with 256 MiB
    assert int(sh(service, vm, "cat /sys/block/vda/size")) * 512 == 1024**3
    df_kib = int(sh(service, vm, "df -k / | tail -1").split()[1])
    assert df_kib > 900 * 1024  # the ext4 filesystem was grown online too
    shown = show(service, vm)
    assert (shown["cpus"], shown["memory_mib"], shown["disk_gib"]) == (3, 512, 1.0)
    # Shrinking CPUs and memory: recorded for the next boot, and said so.
    res = json.loads(
        service.cli("resize", vm, "--cpus", "2", "--memory", "384M", "-o", "json").stdout
    )
    assert res["applied"] == {"cpus": "next-boot", "memory": "next-boot"}
    assert show(service, vm)["pending_next_boot"] == {"cpus": 2, "memory_mib": 384}
    # A disk never shrinks; capacity still applies.
    res = service.cli("resize", vm, "--disk", "600M", check=False)
    assert res.returncode == 1 and "shrinking a disk is not supported" in res.stderr
    res = service.cli("resize", vm, "--memory", "100T", check=False)
    assert res.returncode == ExitCode.REFUSED and "[insufficient-capacity]" in res.stderr
    # A memory snapshot of the hot-plugged machine restores with the same hardware.
    service.cli("snapshot", "create", vm, "hot", "--memory")
    service.cli("snapshot", "restore", vm, "hot")
    assert sh(service, vm, "nproc").strip() == "3"
    # The next cold boot applies what was pending.
    service.cli("resize", vm, "--cpus", "2", "--memory", "384M")
    service.cli("restart", vm)
    assert sh(service, vm, "nproc").strip() == "2"
    assert show(service, vm)["pending_next_boot"] == {}


def test_resize_a_stopped_vm(service, vm):
    service.cli("stop", vm)
    res = json.loads(service.cli("resize", vm, "--cpus", "1", "--disk", "2G", "-o", "json").stdout)
    assert res["applied"] == {"cpus": "next-boot", "disk": "offline"}
    service.cli("start", vm)
    assert sh(service, vm, "nproc").strip() == "1"
    assert int(sh(service, vm, "cat /sys/block/vda/size")) * 512 == 2 * 1024**3
    with service.client() as c, pytest.raises(ApiError) as exc:
        c.resize(vm)
    assert exc.value.code == "invalid-input"


def test_no_helper_or_stray_file_left(service, vm):
    snaps_dir = service.home / "snapshots"
    assert not [p for p in snaps_dir.iterdir() if p.name.endswith(".partial")]
    helpers = [p for p in process.find_by_marker(str(snaps_dir) + "/")
               if any("memimage-helper" in a for a in procs.cmdline(p))]  # fmt: skip
    assert not helpers
    scratch = service.home / "scratch"  # made by the first backup: none when run alone
    assert not scratch.exists() or not list(scratch.iterdir())
