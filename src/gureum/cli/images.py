"""Image commands: build, import, create (from a VM), export, list, show, verify, delete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli import output
from gureum.cli.instances import memory_in_mib
from gureum.cli.output import Format, OutputOpt, bold, call, emit, lines, listing
from gureum.client.client import Client
from gureum.model.hardware import Firmware
from gureum.units import format_size

app = typer.Typer(
    help="VM images: built from Debian packages (tiny, debian), disk image files you import, "
    "or made from a VM (create).",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="Image name, e.g. tiny.")]


@app.command()
def build(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Build an image from Debian packages, with progress. Cached: a rebuild with the same
    packages does nothing; an interrupted build resumes where it stopped."""
    with Client() as client:
        op = client.build_image(name)
        if fmt == Format.table:
            output.err.print(f"Building image {name} (operation {op['id']})")
        started = time.monotonic()
        done = output.follow(client, op)
    result = done["result"]
    img = result["image"]
    verb = "built" if result["built"] else "already up to date"
    took = time.monotonic() - started
    emit(
        result,
        fmt,
        f"image {name} {img['version']} {verb} in {took:.1f} s: "
        f"kernel {img['kernel_version']}, {format_size(img['size_bytes'])} on disk",
    )


@app.command("list")
def list_(fmt: OutputOpt = Format.table) -> None:
    """List the host's images and your projects' own."""
    columns = ["NAME", "VERSION", "BOOT", "KERNEL", "DISK", "SIZE", "MADE", "PROJECT"]
    listing(call(Client.images), fmt, columns, _image_row)


def _image_row(i: dict[str, Any]) -> list[str]:
    return [
        i["name"],
        i["version"],
        i.get("firmware") or i["boot"],  # kernel, or the firmware of a disk that boots itself
        i["kernel_version"] or "-",
        f"{i['disk_gib']:g}G",
        format_size(i["size_bytes"]),
        output.age(i["built_at"]) + " ago",
        i.get("project_id") or "-",  # -: the host's catalog
    ]


@app.command()
def show(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Show an image: files, checksums and the Debian packages it was built from."""
    img = call(Client.image, name)
    where = f"  at {img['path']}" if img.get("path") else ""  # the administrator's only
    files = [
        f"  {role:<7} {meta['file']:<11} {format_size(meta['bytes']):>6}  sha256 {meta['sha256']}"
        for role, meta in img["files"].items()
    ]
    packages = "  packages: " + ", ".join(f"{k} {v}" for k, v in sorted(img["packages"].items()))
    own = {"uefi": " through UEFI (OVMF)", "bios": " through BIOS (SeaBIOS)"}
    boots = (
        f"kernel {img['kernel_version']}"
        if img["boot"] == "kernel"
        else "own bootloader" + own.get(img.get("firmware") or "", "")
    )
    heading = bold(img["name"], f" {img['version']}  {img['origin']}, boots {boots}{where}")
    user = [f"  ssh user: {img['default_user']}"] if img.get("default_user") else []
    templates = [
        f"  template {t['id']}: {t['cpus']} vCPU, {t['memory_mib']} MiB, {t['nics']} NIC(s), "
        f"{format_size(t['size_bytes'])}, {t['clones']} clone(s), made "
        f"{output.age(t['created_at'])} ago"
        for t in img.get("templates") or []
    ]
    emit(img, fmt, lines(heading, *files, *user, *templates, packages if img["packages"] else ""))


@app.command()
def template(
    name: Name,
    cpus: Annotated[int, typer.Option(help="Virtual CPUs of the saved machine.")] = 1,
    memory: Annotated[str, typer.Option(help="Its memory, e.g. 256M or 1G.")] = "256M",
    nics: Annotated[int, typer.Option(help="Its NICs (0 to 4).")] = 1,
    delete: Annotated[
        bool,
        typer.Option("--delete", help="Delete the image's templates no VM was cloned from."),
    ] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Boot the image once, let it settle and save it running as its template: later launches
    of this shape (and the image's disk size) are clones of it, ready in a fraction of a boot.
    Not for images provisioned by cloud-init yet."""
    if delete:
        gone = call(Client.remove_templates, name)
        emit(gone, fmt, f"{name}: {len(gone['removed'])} template(s) deleted")
        return
    with Client() as client:
        op = client.template_image(name, cpus, memory_in_mib(memory), nics)
        if fmt == Format.table:
            output.err.print(f"Making a template of {name} (operation {op['id']})")
        done = output.follow(client, op)
    tpl = done["result"]["template"]
    emit(tpl, fmt, f"template {tpl['id']} of {name}: {tpl['cpus']} vCPU, {tpl['memory_mib']} MiB, "
                   f"{tpl['nics']} NIC(s), {format_size(tpl['size_bytes'])} on disk")  # fmt: skip


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The new image's name.")],
    instance: Annotated[
        str, typer.Option("--from", help="The VM whose disk becomes the image.", show_default=False)
    ],
    description: Annotated[str, typer.Option(help="A line about it.")] = "",
    fmt: OutputOpt = Format.table,
) -> None:
    """Make an image of the project's own from one of its VMs, running or stopped (a running
    one keeps running: its disk is copied through a snapshot). Its members see and launch it
    (`gureum launch NAME`); nobody else sees it. It counts against the snapshot quota."""
    with Client() as client:
        op = client.create_image(name, instance, description)
        if fmt == Format.table:
            output.err.print(f"Making image {name} from {instance} (operation {op['id']})")
        img = output.follow(client, op)["result"]["image"]
    emit(img, fmt, f"image {name} {img['version']} made from {instance}: "
                   f"{format_size(img['size_bytes'])} on disk")  # fmt: skip


@app.command()
def verify(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Check every file of an image against its recorded checksum (an operation: its progress
    is shown as it goes). Exits 0 when intact, 1 when not."""
    with Client() as client:
        res = output.follow(client, client.verify_image(name), quiet=fmt == Format.json)["result"]
    emit(res, fmt, f"{name}: " + ("ok" if res["ok"] else "BROKEN: " + "; ".join(res["problems"])))
    raise typer.Exit(0 if res["ok"] else 1)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A disk image file: qcow2 or raw.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the new image.")],
    user: Annotated[
        str | None,
        typer.Option("--user", help="Its cloud-init default user, for `gureum ssh` (e.g. debian)."),
    ] = None,
    firmware: Annotated[
        Firmware | None,
        typer.Option(
            "--firmware",
            help="What boots it: bios (SeaBIOS) or uefi (OVMF). Default: what the disk shows "
            "(boot code in its MBR: bios; else an EFI system partition: uefi).",
        ),
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Add a disk image you have (a cloud image file) to the catalog. Its VMs boot from its own
    bootloader, through BIOS or UEFI; stock cloud-init in it finds its data by itself. Checked
    first: a qcow2 that names another file, a file no firmware boots, or one over the service's
    limit is refused and nothing is kept."""
    started = time.monotonic()
    with Client() as client, open(path, "rb") as f:
        img = client.import_image(f, name, user, firmware.value if firmware else None)
    took = time.monotonic() - started
    said = (
        f"image {name} {img['version']} imported in {took:.1f} s: {img['origin']}, "
        f"booted through {img['firmware']}, a {img['disk_gib']:g}G disk, "
        f"{format_size(img['size_bytes'])} stored"
    )
    emit(img, fmt, said)


@app.command()
def export(
    name: Name,
    path: Annotated[Path, typer.Argument(help="The qcow2 file to write.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Write an imported image's disk as a qcow2 file another QEMU or cloud boots."""
    partial = path.with_name(path.name + ".partial")
    try:
        with Client() as client, open(partial, "wb") as f:
            size = client.export_image(name, f)
    except BaseException:
        partial.unlink(missing_ok=True)  # never half a disk under any name
        raise
    partial.rename(path)
    emit({"image": name, "path": str(path), "bytes": size}, fmt,
         f"image {name} exported to {path}: {format_size(size)}")  # fmt: skip


@app.command()
def delete(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Delete an image (refused while instances use it): the host's catalog's by the
    administrator, a project's own by its members."""
    emit(call(Client.delete_image, name), fmt, f"image {name} deleted")
