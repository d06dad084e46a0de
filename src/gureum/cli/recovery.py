"""Backup and recovery, and elastic resources: snapshot, clone, backup, resize."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli import output
from gureum.cli.instances import memory_in_mib
from gureum.cli.output import (
    Format,
    OutputOpt,
    call,
    emit,
    lines,
    listing,
    read_size,
    usage_error,
)
from gureum.client.client import ApiError, Client
from gureum.units import GIB, format_size

snapshot_app = typer.Typer(
    help="Snapshots of a VM: disk only, or disk and memory.", no_args_is_help=True
)
backup_app = typer.Typer(
    help="Portable backup archives: export, import, verify.", no_args_is_help=True
)
Name = Annotated[str, typer.Argument(help="Instance name or id.")]
Snap = Annotated[str, typer.Argument(help="Snapshot name.")]


def _finish(client: Client, op: dict, fmt: Format) -> dict:
    return output.follow(client, op, quiet=fmt == Format.json)


@snapshot_app.command("create")
def snapshot_create(
    name: Name,
    snapshot: Snap,
    memory: Annotated[
        bool, typer.Option("--memory", help="Also save memory: restore resumes the running VM.")
    ] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Take a snapshot. A running VM's filesystems are frozen through its guest agent for a
    disk snapshot; --memory pauses it briefly instead."""
    with Client() as client:
        result = _finish(client, client.snapshot(name, snapshot, memory=memory), fmt)["result"]
    snap = result["snapshot"]
    kind = "disk + memory" if snap["memory"] else "disk"
    emit(
        result,
        fmt,
        f"snapshot {snap['name']} of {name} taken in {result['seconds']:.2f} s "
        f"({kind}, {snap['consistency']}, {format_size(snap['size_bytes'])})",
    )


@snapshot_app.command("list")
def snapshot_list(name: Name, fmt: OutputOpt = Format.table) -> None:
    """A VM's snapshots."""
    snaps = call(Client.snapshots, name)
    columns = ["NAME", "KIND", "CONSISTENCY", "CPUS", "MEMORY", "DISK", "SIZE", "AGE"]
    empty = f"{name} has no snapshots. Take one with `gureum snapshot create {name} NAME`."
    listing(snaps, fmt, [*columns, "CLONES"], _snapshot_row, empty=empty)


def _snapshot_row(s: dict[str, Any]) -> list[str]:
    return [
        s["name"],
        "disk + memory" if s["memory"] else "disk",  # as `snapshot create` says it
        s["consistency"],
        str(s["cpus"]),
        f"{s['memory_mib']}M",
        f"{s['disk_gib']:g}G",
        format_size(s["size_bytes"]),
        output.age(s["created_at"]),
        ", ".join(s["depended_on_by"]) or "-",
    ]


@snapshot_app.command("restore")
def snapshot_restore(
    name: Name,
    snapshot: Snap,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="A running VM restored to a disk snapshot is restarted on that disk: say so.",
        ),
    ] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Put the VM back to the snapshot: its disk, and with a memory snapshot its running state
    (the guest resumes where it was, with the vCPUs and memory it had then). Changes since are
    discarded. The disk keeps its current size. Restoring a disk snapshot of a running VM
    restarts it, so it needs --restart."""
    with Client() as client:
        done = _finish(client, client.restore(name, snapshot, restart=restart), fmt)
        inst = client.instance(name)
    took = done["finished_at"] - done["created_at"]
    emit(
        done["result"], fmt, f"{name} restored to {snapshot} in {took:.2f} s; it is {inst['state']}"
    )


@snapshot_app.command("delete")
def snapshot_delete(name: Name, snapshot: Snap, fmt: OutputOpt = Format.table) -> None:
    """Delete a snapshot. Disk data a clone (or the VM itself) builds on is kept while needed."""
    gone = call(Client.delete_snapshot, name, snapshot)
    emit(gone, fmt, f"snapshot {snapshot} deleted{_kept_for(name, gone)}")


def _kept_for(vm: str, gone: dict[str, Any]) -> str:
    """Why a deleted snapshot's disk data is still on disk, as the end of a sentence: the VMs
    whose disks build on it, the VM itself (its own chain) or clones made from it."""
    users = [
        f"{vm} itself" if u == vm else f"clone {u}" for u in gone.get("disk_data_kept_for") or []
    ]
    if not users:
        return ""
    who = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} and {users[-1]}"
    return f"; its disk data is kept: {who} still {'builds' if len(users) == 1 else 'build'} on it"


def clone(
    source: Annotated[str, typer.Argument(help="VM/SNAPSHOT to clone, e.g. web1/before-upgrade.")],
    name: Annotated[str, typer.Argument(help="The new VM's name (and hostname).")],
    fmt: OutputOpt = Format.table,
) -> None:
    """A new VM from a snapshot: a thin copy with its own id, name, MAC, hostname and machine
    id. From a memory snapshot it resumes running at once instead of booting."""
    if "/" not in source:
        raise usage_error("clone needs VM/SNAPSHOT, e.g. web1/before-upgrade")
    vm, snap = source.split("/", 1)
    with Client() as client:
        res = client.clone(vm, snap, name)
        done = _finish(client, res["operation"], fmt)
    result = done["result"]
    inst = result["instance"]
    took = done["finished_at"] - done["created_at"]
    said = [f"{name} cloned from {source} in {took:.2f} s; it is {inst['state']}"]
    ident = result.get("identity_refreshed")
    if ident:
        macs = ", ".join(new for _old, new in ident.get("macs", [])) or inst.get("mac") or "-"
        said.append(
            f"  identity refreshed: hostname {ident['hostname']}, MAC {macs}, "
            f"machine id {ident['machine_id']}, generation id {ident['generation_id']}"
        )
    emit(result, fmt, lines(*said))


RESIZED = {
    "live": "live",
    "next-boot": "at the next boot",
    "offline": "now (VM stopped)",
    "unchanged": "unchanged",
}


def resize(
    name: Name,
    cpus: Annotated[int | None, typer.Option(help="vCPUs.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory, e.g. 1G.")] = None,
    disk: Annotated[str | None, typer.Option(help="Disk size, e.g. 4G (grow only).")] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Change vCPUs, memory or disk: live where the guest allows (hot-plug), else at the next
    boot. Says which for each."""
    memory_mib = None if memory is None else memory_in_mib(memory)
    disk_gib = None if disk is None else read_size(disk, default_unit="G", what="disk") / GIB
    with Client() as client:
        op = client.resize(name, cpus=cpus, memory_mib=memory_mib, disk_gib=disk_gib)
        result = _finish(client, op, fmt)["result"]
    said = [f"{what}: {RESIZED.get(how, how)}" for what, how in result["applied"].items()]
    emit(result, fmt, lines(*said))


@backup_app.command("export")
def backup_export(
    name: Name,
    path: Annotated[str, typer.Argument(help="Archive file to write, or - for stdout.")],
    memory: Annotated[bool, typer.Option("--memory", help="Include memory (running VM).")] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Write one portable archive of the VM: config, disk, boot files, checksums, and with
    --memory its running state. The VM keeps running. With - the archive is stdout, so there
    is no -o json then."""
    if path == "-" and fmt == Format.json:
        raise usage_error("-o json needs an archive file: with - the archive itself is stdout")
    started = time.monotonic()
    with Client() as client:
        if path == "-":
            client.export(name, sys.stdout.buffer, memory=memory)
            return
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        try:
            # The archive holds the VM's whole disk (and RAM): its owner's alone, whatever the
            # umask, and also if a .partial was left readable by others.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            with open(fd, "wb") as f:
                size = client.export(name, f, memory=memory)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)  # never leave half an archive under any name
            raise
        partial.rename(target)
    took = time.monotonic() - started
    written = {"instance": name, "path": path, "bytes": size, "seconds": round(took, 3)}
    emit(written, fmt, f"{name} exported to {path}: {format_size(size)} in {took:.1f} s")


@backup_app.command("import")
def backup_import(
    path: Annotated[Path, typer.Argument(help="Archive file, or - for stdin.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the new VM.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a VM from an archive (checked whole first; a damaged one creates nothing). It
    is stopped; with memory, `gureum snapshot restore NAME backup` resumes it."""
    with Client() as client, _open(path) as f:
        inst = client.import_backup(f, name)
    hint = ""
    if inst["snapshots"]:
        hint = f" (resume it with `gureum snapshot restore {name} backup`)"
    emit(inst, fmt, f"{name} imported ({inst['id']}); it is {inst['state']}{hint}")


@backup_app.command("verify")
def backup_verify(
    path: Annotated[Path, typer.Argument(help="Archive file, or - for stdin.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Prove an archive restores: import it as a throw-away VM, boot it, check the guest
    answers, remove it (an operation: its progress is shown as it goes). Exits 0 on pass, 1 on
    fail; an archive that is not whole fails at once."""
    started = time.monotonic()
    with Client() as client, _open(path) as f:
        try:
            op = client.verify_backup(f)
        except ApiError as exc:
            if exc.code != "invalid-archive":
                raise
            took = round(time.monotonic() - started, 3)
            res = {"ok": False, "seconds": took, "detail": exc.message}
        else:
            res = _finish(client, op, fmt)["result"]
    emit(res, fmt, f"{'PASS' if res['ok'] else 'FAIL'} in {res['seconds']:.1f} s: {res['detail']}")
    raise typer.Exit(0 if res["ok"] else 1)


def _open(path: Path):
    if str(path) == "-":
        return open(sys.stdin.fileno(), "rb", closefd=False)
    if not path.is_file():
        raise usage_error(f"{path} is not a file")
    return open(path, "rb")


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
    app.add_typer(backup_app, name="backup")
    app.command("clone")(clone)
    app.command("resize")(resize)
