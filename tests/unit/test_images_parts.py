import os
import subprocess
from pathlib import Path

from gureum.images.build import CC_ARGV, guest_file
from gureum.images.cpio import build_initramfs
from gureum.images.debian import Package, library_closure, parse_depends


def test_parse_depends():
    text = (
        "libc6 (>= 2.34), libglib2.0-0 (>= 2.73.0) | libglib-alt, perl:any, , init-system-helpers"
    )
    assert parse_depends(text) == ("libc6", "libglib2.0-0", "perl", "init-system-helpers")


def test_library_closure_follows_only_libraries():
    index = {
        "qemu-guest-agent": ("libc6", "libglib2.0-0", "init-system-helpers"),
        "libglib2.0-0": ("libc6", "libffi8"),
        "libc6": ("libgcc-s1",),
        "libgcc-s1": ("gcc-12-base", "libc6"),
        "libffi8": ("libc6",),
    }
    lookup = lambda name: Package(name, "1", "", 1, index.get(name, ()))  # noqa: E731
    names = [p.name for p in library_closure(["qemu-guest-agent"], lookup)]
    assert names == ["libc6", "libffi8", "libgcc-s1", "libglib2.0-0", "qemu-guest-agent"]


def test_initramfs_round_trips_through_cpio(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/tool").write_bytes(b"\x7fELF-ish")
    (tree / "bin/tool").chmod(0o755)
    (tree / "init").write_text("#!/bin/sh\necho hi\n")
    (tree / "link").symlink_to("bin/tool")
    (tree / "empty").mkdir()
    archive = tmp_path / "initrd.img"
    build_initramfs(tree, archive)
    first = archive.read_bytes()
    build_initramfs(tree, archive)
    assert archive.read_bytes() == first  # deterministic: same inputs, same bytes
    out = tmp_path / "out"
    out.mkdir()
    listing = subprocess.run(
        f"gzip -dc {archive} | cpio -idm --quiet && find . | sort",
        shell=True,
        cwd=out,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing == [".", "./bin", "./bin/tool", "./empty", "./init", "./link"]
    assert (out / "bin/tool").read_bytes() == b"\x7fELF-ish"
    assert (out / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "link").readlink() == Path("bin/tool")


def test_the_reseed_program_reseeds_as_root_and_is_refused_otherwise(tmp_path: Path):
    """tiny's reseed (RNDRESEEDCRNG), built as the image builder builds it, run on this host's
    kernel: 0 as root; EPERM's 1 for anyone else, so its exit code is the errno it met."""
    source, program = tmp_path / "reseed.c", tmp_path / "reseed"
    source.write_bytes(guest_file("reseed.c"))
    subprocess.run([*CC_ARGV, "-o", str(program), str(source)], check=True)
    program.chmod(0o755)
    tmp_path.chmod(0o755)
    assert os.path.getsize(program) < 16384  # a few system calls, no libc
    assert subprocess.run([str(program)]).returncode == 0
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", str(program)]
    assert subprocess.run(nobody).returncode == 1
