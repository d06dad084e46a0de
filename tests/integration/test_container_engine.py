"""The container engine on its own (issue 14, part 1): `tiny` run by runc as a system container
from its own image's files, and what keeps it apart, as the container itself and the host say.

No service path launches containers yet; this drives the engine's parts directly, on the image
the session's service built."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gureum.config import load_config
from gureum.engine.container import bundle
from gureum.engine.container import rootfs as container_root
from gureum.engine.container.runc import Runc
from gureum.engine.qemu.agent import ExecResult
from gureum.host import permissions
from gureum.host.containers import Containers, ContainerStart
from gureum.images import rootfs
from gureum.network import tap
from gureum.sys import procs
from tests.integration.conftest import Service
from tests.waiting import wait_for

BASE = 1_600_196_608


def tiny_disk(service: Service) -> Path:
    """The disk of the session's `tiny` image (built now if it is not yet)."""
    service.cli("image", "build", "tiny")
    version = json.loads(service.cli("image", "show", "tiny", "-o", "json").stdout)["version"]
    return service.home / "images" / "tiny" / version / "disk.qcow2"


def host_containers(home: Path) -> Containers:
    """The host's containers under a home of their own, its folders as the service makes them."""
    config = load_config(home, env={})
    permissions.crossable(config.home, config.run_dir, config.instances_dir)
    config.cache_dir.mkdir(parents=True)
    return Containers(config)


def remove_test_groups(name: str) -> None:
    """The control groups runc made under /gureum-test (v2, then each v1 hierarchy)."""
    cgroups = Path("/sys/fs/cgroup")
    for hierarchy in [cgroups, *cgroups.iterdir()]:
        for group in (hierarchy / "gureum-test" / name, hierarchy / "gureum-test"):
            if group.is_dir():
                group.rmdir()


def test_tiny_runs_as_a_system_container_apart_from_the_host(
    service: Service, tmp_path: Path
) -> None:
    disk = tiny_disk(service)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    files = rootfs.unpack(disk, tmp_path / "rootfs", scratch)
    # The container's uid must get through every folder above its root (pytest's are 0700).
    folder = Path(tempfile.mkdtemp(prefix="gureum-c1-", dir="/tmp"))
    folder.chmod(0o711)
    runc = Runc(tmp_path / "runc")
    root = container_root.mount(files, folder, BASE, 64 << 20)
    spec = bundle.ContainerSpec("gureum-test-c1", "c1", root, BASE, 1, 128, "/gureum-test/c1")
    (folder / "config.json").write_text(json.dumps(bundle.oci_config(spec)))

    def run(*argv: str) -> str:
        result = asyncio.run(runc.exec("gureum-test-c1", list(argv), None, 30))
        assert result.exit_code == 0, result
        return result.stdout.decode()

    try:
        pid = asyncio.run(runc.create("gureum-test-c1", folder, folder / "console.log"))
        asyncio.run(runc.start("gureum-test-c1"))
        # Its own init (busybox), which runs the image's start script to its end.
        wait_for(lambda: b"gureum-init: ready" in (folder / "console.log").read_bytes(), 30,
                 interval=0.1, what="tiny's init in the container")  # fmt: skip
        assert os.stat(f"/proc/{pid}").st_uid == BASE  # root inside is no one on the host
        assert run("cat", "/proc/1/comm").strip() == "init"
        assert run("id", "-u").strip() == "0"
        status = run("cat", "/proc/self/status")
        assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status
        # What root inside cannot do: change the kernel's settings (/proc/sys is mounted
        # read-only, and its files belong to a host root it is not).
        assert " /proc/sys proc ro," in run("cat", "/proc/mounts")
        refused = asyncio.run(runc.exec("gureum-test-c1", ["sh", "-c",
                              "echo x > /proc/sys/kernel/hostname"], None, 30))  # fmt: skip
        assert refused.exit_code != 0, refused
        # Its own writes land in its own layer; the image's files are untouched.
        run("sh", "-c", "echo mine > /etc/motd")
        assert (folder / "layer" / "upper" / "etc" / "motd").read_text() == "mine\n"
        assert not (files / "etc" / "motd").exists()
        # Its processes are its own: the host's are not in its process table.
        assert str(os.getpid()) not in run("ps").split()
        asyncio.run(runc.kill("gureum-test-c1"))
        # Its init was handed to this process (a subreaper, as the service is): dead means a
        # zombie until it is reaped.
        wait_for(lambda: not procs.is_alive(pid), 10, interval=0.05, what="its end")
        procs.reap(pid)
        state = asyncio.run(runc.state("gureum-test-c1"))
        assert state is not None and state["status"] == "stopped"
    finally:
        asyncio.run(runc.delete("gureum-test-c1"))
        container_root.unmount(folder)
        remove_test_groups("c1")
    assert asyncio.run(runc.state("gureum-test-c1")) is None
    assert not container_root.is_mounted(folder / "lower")
    shutil.rmtree(folder)


def test_the_hosts_containers_start_answer_power_off_and_go(service: Service) -> None:
    """host/containers.py on the same image: the image's files unpacked once, the container
    named, its init's container branch (no hardware to start), a stop that is a power-off, and
    a delete that leaves nothing mounted, running or on disk."""
    disk = tiny_disk(service)
    home = Path(tempfile.mkdtemp(prefix="gureum-ct-", dir="/tmp"))
    containers = host_containers(home)
    want = ContainerStart("i-c2", "c2", disk, BASE + 65536, 1, 128, "/gureum-test/i-c2")
    folder = containers.folder("i-c2")
    try:
        pid = asyncio.run(containers.start(want))
        log = containers.console_log("i-c2")
        wait_for(lambda: b"gureum-init: ready" in log.read_bytes(), 30, interval=0.1,
                 what="tiny's init in the container")  # fmt: skip
        assert asyncio.run(containers.pid("i-c2")) == pid

        def run(*argv: str) -> str:
            return asyncio.run(containers.exec("i-c2", list(argv), None, 30)).stdout.decode()

        assert run("hostname").strip() == "c2"
        # No other host user reaches its files or what it prints.
        assert log.stat().st_mode & 0o777 == 0o600
        assert (folder.stat().st_mode & 0o777, folder.stat().st_gid) == (0o710, BASE + 65536)
        assert run("cat", "/etc/hostname") == "c2\n"
        names = run("ps", "-o", "comm")
        assert "acpid" not in names and "qemu-ga" not in names  # no hardware, no agent port
        assert asyncio.run(containers.stop("i-c2", 20)) == "powerdown"
        assert asyncio.run(containers.pid("i-c2")) is None
        assert not container_root.is_mounted(folder / "root")
        assert not container_root.is_mounted(folder / "layer")
        assert (folder / "layer.ext4").is_file()  # its own files stay, in its layer
    finally:
        asyncio.run(containers.destroy("i-c2"))
        remove_test_groups("i-c2")
    assert not folder.exists() and not container_root.is_mounted(folder / "lower")
    shutil.rmtree(home)


def test_a_containers_nic_is_a_veth_on_its_networks_bridge(service: Service) -> None:
    """The container's end is its eth0 with the instance's MAC; the other end, named as a VM's
    TAP in that slot (what DHCP and the firewall match), is on the network's bridge: the
    container reaches the bridge's address. A namespace and bridge made here stand for a
    gureum network."""
    disk = tiny_disk(service)
    home = Path(tempfile.mkdtemp(prefix="gureum-ct-", dir="/tmp"))
    containers = host_containers(home)
    ns, mac = f"gureum-cttest-{os.getpid()}", "52:54:00:c0:ff:ee"
    for argv in (["ip", "netns", "add", ns], ["ip", "-n", ns, "link", "add", "br0", "type",
                 "bridge"], ["ip", "-n", ns, "addr", "add", "10.251.0.1/24", "dev", "br0"],
                 ["ip", "-n", ns, "link", "set", "br0", "up"]):  # fmt: skip
        subprocess.run(argv, check=True)
    want = ContainerStart("i-c3", "c3", disk, BASE + 2 * 65536, 1, 128, "/gureum-test/i-c3",
                          nics=((0, mac, ns),))  # fmt: skip
    try:
        asyncio.run(containers.start(want))
        log = containers.console_log("i-c3")
        wait_for(lambda: b"gureum-init: ready" in log.read_bytes(), 30, interval=0.1,
                 what="tiny's init in the container")  # fmt: skip

        def run(*argv: str) -> int:
            return asyncio.run(containers.exec("i-c3", list(argv), None, 30)).exit_code

        assert asyncio.run(containers.exec("i-c3", ["cat", "/sys/class/net/eth0/address"],
                                           None, 30)).stdout.decode().strip() == mac  # fmt: skip
        host_end = tap.tap_name("i-c3", 0)
        shown = subprocess.run(["ip", "-n", ns, "-o", "link", "show", host_end],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "master br0" in shown
        run("killall", "udhcpc")  # no DHCP server here: a fixed address instead
        assert run("ip", "addr", "add", "10.251.0.2/24", "dev", "eth0") == 0
        assert run("ip", "link", "set", "eth0", "up") == 0
        assert run("ping", "-c", "1", "-W", "5", "10.251.0.1") == 0
    finally:
        asyncio.run(containers.destroy("i-c3"))
        gone = subprocess.run(["ip", "-n", ns, "link", "show", tap.tap_name("i-c3", 0)],
                              capture_output=True)  # fmt: skip
        subprocess.run(["ip", "netns", "del", ns], check=True)
        remove_test_groups("i-c3")
        shutil.rmtree(home)
    assert gone.returncode != 0  # the pair went with the container's namespace


def test_debian_runs_systemd_as_a_container_that_cannot_raise_its_own_limits(
    service: Service,
) -> None:
    """`debian`'s own systemd as the container's init: it gets its control group's folder (so
    it can make its groups) but not the limit files in it, and powers off on its signal."""
    service.cli("image", "build", "debian", timeout=1800)
    version = json.loads(service.cli("image", "show", "debian", "-o", "json").stdout)["version"]
    disk = service.home / "images" / "debian" / version / "disk.qcow2"
    home = Path(tempfile.mkdtemp(prefix="gureum-ct-", dir="/tmp"))
    containers = host_containers(home)
    want = ContainerStart("i-c4", "c4", disk, BASE + 3 * 65536, 2, 512, "/gureum-test/i-c4",
                          init="systemd")  # fmt: skip
    try:
        asyncio.run(containers.start(want))

        def run(*argv: str) -> ExecResult:
            return asyncio.run(containers.exec("i-c4", list(argv), None, 60))

        def settled() -> bool:
            state = run("systemctl", "is-system-running").stdout.decode().strip()
            return state in ("running", "degraded")

        wait_for(settled, 120, interval=1, what="systemd settled in the container")
        assert run("cat", "/proc/1/comm").stdout.decode().strip() == "systemd"
        assert run("hostname").stdout.decode().strip() == "c4"
        # Its own group is its own to divide; its limits are not its to change.
        groups = run("cat", "/proc/self/cgroup").stdout.decode()
        assert "name=systemd:/" in groups
        refused = run("sh", "-c", "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert refused.exit_code != 0, refused
        limit = Path("/sys/fs/cgroup/memory/gureum-test/i-c4/memory.limit_in_bytes")
        if limit.exists():  # cgroup v1, as here
            assert int(limit.read_text()) == 512 * 2**20
        assert asyncio.run(containers.stop("i-c4", 60)) == "powerdown"
    finally:
        asyncio.run(containers.destroy("i-c4"))
        remove_test_groups("i-c4")
        shutil.rmtree(home)
