"""A container's root filesystem (issue 14): an image disk unpacked once without mounting it, and
seen through a container's uid range by an idmapped mount, read-only, under a layer of its own.

Real kernel calls (as root, as the suite runs): no runc, no VM."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from gureum.engine.container import rootfs as container_root
from gureum.engine.container.bundle import MOUNT_POINTS
from gureum.errors import GureumError, InvalidState
from gureum.host.containers import _write_owned, cgroup_folders, delegate_cgroups
from gureum.images import rootfs

BASE = 1_600_131_072


def _ext4_disk(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "sbin").mkdir()
    (tree / "etc" / "hostname").write_text("image\n")
    (tree / "etc" / "shadow").write_text("root:*:1::::::\n")
    os.chmod(tree / "etc" / "shadow", 0o640)
    os.chown(tree / "etc" / "shadow", 0, 42)
    (tree / "home").mkdir()
    (tree / "home" / "user").mkdir()
    os.chown(tree / "home" / "user", 1000, 1000)
    (tree / "sbin" / "init").symlink_to("/bin/busybox")
    disk = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(disk), "16M"], check=True)
    return disk


def test_an_ext4_disk_is_unpacked_with_its_owners_modes_and_links(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dest = rootfs.unpack(_ext4_disk(tmp_path), tmp_path / "image" / "rootfs", scratch)
    shadow = (dest / "etc" / "shadow").stat()
    assert (shadow.st_uid, shadow.st_gid, shadow.st_mode & 0o777) == (0, 42, 0o640)
    assert (dest / "home" / "user").stat().st_uid == 1000
    assert os.readlink(dest / "sbin" / "init") == "/bin/busybox"
    assert not list(scratch.iterdir())  # the raw copy is gone
    assert dest.stat().st_mode & 0o777 == 0o700  # no host user sees the image's files
    assert not (tmp_path / "image" / "rootfs.partial").exists()


def test_a_filesystem_with_errors_is_not_unpacked(tmp_path: Path) -> None:
    """debugfs would write wherever a crafted entry points: e2fsck must find nothing first."""
    disk = _ext4_disk(tmp_path)
    subprocess.run(["debugfs", "-w", "-R", "clri /home", str(disk)], check=True,
                   capture_output=True)  # fmt: skip
    with pytest.raises(InvalidState, match="errors"):
        rootfs.unpack(disk, tmp_path / "image" / "rootfs", tmp_path)
    assert not (tmp_path / "image" / "rootfs").exists()
    assert [p.name for p in (tmp_path / "image").iterdir()] == [".rootfs.lock"]


def test_a_disk_with_a_partition_table_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "parted.raw"
    disk.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (4 << 20))
    with pytest.raises(InvalidState, match="not one ext4 filesystem"):
        rootfs.unpack(disk, tmp_path / "rootfs", tmp_path)
    assert not (tmp_path / "rootfs").exists()


def test_each_container_sees_the_image_as_its_own_root_and_cannot_change_it(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    image = rootfs.unpack(_ext4_disk(tmp_path), tmp_path / "rootfs", scratch)
    with pytest.raises(GureumError, match="searchable by others"):  # pytest's folders are 0700
        container_root.mount(image, tmp_path / "c0", BASE, 64 << 20)
    # runc mounts a container's root as the container's uid: every folder above it lets it by.
    folder = Path(tempfile.mkdtemp(prefix="gureum-c1-", dir="/tmp")) / "c1"
    folder.parent.chmod(0o711)
    image.chmod(0o700)  # as images/rootfs.py leaves it
    folder.mkdir(mode=0o711)  # as the service makes it: its container's uid crosses it
    umask = os.umask(0o077)  # the service's: the container's "/" must not take it
    try:
        root = container_root.mount(image, folder, BASE, 64 << 20)
    finally:
        os.umask(umask)
    try:
        assert container_root.is_mounted(root) and container_root.is_mounted(folder / "lower")
        assert root.stat().st_mode & 0o777 == 0o755  # its users can reach their own files
        shadow = (root / "etc" / "shadow").stat()
        assert (shadow.st_uid, shadow.st_gid) == (BASE, BASE + 42)  # shifted, not copied
        assert (root / "home" / "user").stat().st_uid == BASE + 1000
        (root / "etc" / "hostname").write_text("c1\n")  # lands in its own layer
        assert (folder / "layer" / "upper" / "etc" / "hostname").read_text() == "c1\n"
        assert (image / "etc" / "hostname").read_text() == "image\n"
        with pytest.raises(OSError):
            (folder / "lower" / "etc" / "hostname").write_text("x")  # the shared view: read-only
        # Its layer is its disk: what it writes cannot outgrow it.
        with pytest.raises(OSError) as full, open(root / "big", "wb") as big:
            for _ in range(80):
                big.write(b"x" * (1 << 20))
                big.flush()
                os.fsync(big.fileno())
        assert full.value.errno == errno.ENOSPC
        (root / "big").unlink()
    finally:
        container_root.unmount(folder)
    for name in ("lower", "layer", "root"):
        assert not container_root.is_mounted(folder / name)
    assert not (folder / "root").exists()
    # Its files stay in its layer until it is deleted; a larger size grows the layer.
    root = container_root.mount(image, folder, BASE, 128 << 20)
    try:
        assert (root / "etc" / "hostname").read_text() == "c1\n"
        assert os.statvfs(root / "etc").f_blocks * os.statvfs(root / "etc").f_frsize > 100 << 20
    finally:
        container_root.unmount(folder)
    shutil.rmtree(folder.parent)


def test_a_folder_whose_path_overlayfs_would_split_is_refused(tmp_path: Path) -> None:
    (tmp_path / "img" / "sbin").mkdir(parents=True)
    with pytest.raises(GureumError, match="cannot have"):
        container_root.mount(tmp_path / "img", tmp_path / "a,b", BASE, 64 << 20)


def test_the_mount_table_is_read_with_its_escapes(tmp_path: Path) -> None:
    odd = tmp_path / "with space"
    odd.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(odd)], check=True)
    try:
        assert container_root.is_mounted(odd)
    finally:
        subprocess.run(["umount", str(odd)], check=True)
    assert not container_root.is_mounted(odd)


def test_the_host_writes_into_a_containers_root_without_following_its_links(
    tmp_path: Path,
) -> None:
    """The container's own layer may hold links to anywhere: /etc made a link to a host folder
    must not turn the host's write of its hostname into a write there."""
    root, outside = tmp_path / "root", tmp_path / "host-etc"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    _write_owned(root, "etc", "hostname", "c1\n", BASE)
    written = (root / "etc" / "hostname").stat()
    assert (root / "etc" / "hostname").read_text() == "c1\n" and written.st_uid == BASE
    (root / "etc" / "hostname").unlink()
    (root / "etc" / "hostname").symlink_to(outside / "hostname")  # the file a link: replaced
    _write_owned(root, "etc", "hostname", "c1\n", BASE)
    assert not (outside / "hostname").exists()
    (root / "etc" / "hostname").unlink()
    (root / "etc").rmdir()
    (root / "etc").symlink_to(outside)  # the folder a link: refused
    with pytest.raises(OSError):
        _write_owned(root, "etc", "hostname", "c1\n", BASE)
    assert list(outside.iterdir()) == []


def test_delegating_a_control_group_gives_its_folder_not_its_limits() -> None:
    """What systemd in a container gets (host/containers.py): in every hierarchy the process
    is in, its group's folder and process lists, never a limit file; nothing is created (on
    cgroup v1 the v2-only bounds are not there to set: cgroupfs refuses new files)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    made: list[Path] = []
    left: Path | None = None  # a hierarchy where it stays in the group it started in
    try:
        for folder in cgroup_folders(sleeper.pid):  # the roots it starts in, here
            if left is None:
                left = folder
                continue
            group = folder / "gureum-unit-delegation"
            group.mkdir()
            made.append(group)
            for name in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: empty until copied down
                if (group / name).exists():
                    (group / name).write_text((folder / name).read_text())
            (group / "cgroup.procs").write_text(str(sleeper.pid))
        assert left is not None
        assert sorted(cgroup_folders(sleeper.pid)) == sorted([left, *made])
        delegate_cgroups(sleeper.pid, BASE, "/gureum-unit-delegation")
        for group in made:
            assert group.stat().st_uid == BASE
            assert (group / "cgroup.procs").stat().st_uid == BASE
            limits = [p for p in group.iterdir() if p.name.startswith(("memory.", "pids.", "cpu."))]
            assert all(p.stat().st_uid == 0 for p in limits), limits
        # Where runc did not put it in its own group, the group it is in is not its own (it
        # is shared): never given away.
        assert left.stat().st_uid == 0 and (left / "cgroup.procs").stat().st_uid == 0
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in made:
            group.rmdir()


def test_a_start_is_refused_where_the_containers_layer_put_a_link_at_a_mount_point(
    tmp_path: Path,
) -> None:
    """The container wrote its own layer on its last run: a link where runc mounts (/proc, /dev,
    ...) could lead runc 1.1.5 to mount onto the host, so the start is refused; folders, and the
    whiteout of a deleted one, are let be."""
    upper = tmp_path / "layer" / "upper"
    upper.mkdir(parents=True)
    (upper / "dev").mkdir()
    os.mknod(upper / "run", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    container_root.check_mount_points(tmp_path, MOUNT_POINTS)
    (upper / "proc").symlink_to("/proc/1/root/proc")
    with pytest.raises(InvalidState, match="link at /proc"):
        container_root.check_mount_points(tmp_path, MOUNT_POINTS)
    (upper / "proc").unlink()
    (upper / "tmp").write_text("")
    with pytest.raises(InvalidState, match="file at /tmp"):
        container_root.check_mount_points(tmp_path, MOUNT_POINTS)
