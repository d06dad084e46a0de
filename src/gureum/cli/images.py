"""Image commands: build, list, show, verify, delete."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from gureum.cli import output
from gureum.cli.output import Format, OutputOpt, bold, call, emit, lines, listing
from gureum.client.client import Client
from gureum.units import format_size

app = typer.Typer(
    help="Build and manage VM images (built from Debian packages).", no_args_is_help=True
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
    """List built images."""
    listing(
        call(Client.images), fmt, ["NAME", "VERSION", "KERNEL", "DISK", "SIZE", "BUILT"], _image_row
    )


def _image_row(i: dict[str, Any]) -> list[str]:
    return [
        i["name"],
        i["version"],
        i["kernel_version"],
        f"{i['disk_gib']:g}G",
        format_size(i["size_bytes"]),
        output.age(i["built_at"]) + " ago",
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
    heading = bold(img["name"], f" {img['version']}  kernel {img['kernel_version']}{where}")
    emit(img, fmt, lines(heading, *files, packages))


@app.command()
def verify(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Check every file of an image against its recorded checksum (an operation: its progress
    is shown as it goes). Exits 0 when intact, 1 when not."""
    with Client() as client:
        res = output.follow(client, client.verify_image(name), quiet=fmt == Format.json)["result"]
    emit(res, fmt, f"{name}: " + ("ok" if res["ok"] else "BROKEN: " + "; ".join(res["problems"])))
    raise typer.Exit(0 if res["ok"] else 1)


@app.command()
def delete(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Delete an image (refused while instances use it)."""
    emit(call(Client.delete_image, name), fmt, f"image {name} deleted")
