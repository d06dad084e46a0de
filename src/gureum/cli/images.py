"""Image commands: build, list, show, verify, delete."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from gureum.cli import output
from gureum.cli.output import Format, OutputOpt, bold, out
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
    if fmt == Format.json:
        output.print_json(result)
        return
    img = result["image"]
    verb = "built" if result["built"] else "already up to date"
    out.print(
        f"image {name} {img['version']} {verb} in {time.monotonic() - started:.1f} s: "
        f"kernel {img['kernel_version']}, {format_size(img['size_bytes'])} on disk"
    )


@app.command("list")
def list_(fmt: OutputOpt = Format.table) -> None:
    """List built images."""
    with Client() as client:
        items = client.images()
    if fmt == Format.json:
        output.print_json(items)
        return
    output.table(
        ["NAME", "VERSION", "KERNEL", "DISK", "SIZE", "BUILT"],
        [
            [
                i["name"],
                i["version"],
                i["kernel_version"],
                f"{i['disk_gib']:g}G",
                format_size(i["size_bytes"]),
                output.age(i["built_at"]) + " ago",
            ]
            for i in items
        ],
    )


@app.command()
def show(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Show an image: files, checksums and the Debian packages it was built from."""
    with Client() as client:
        img = client.image(name)
    if fmt == Format.json:
        output.print_json(img)
        return
    where = f"  at {img['path']}" if img.get("path") else ""  # the administrator's only
    out.print(bold(img["name"], f" {img['version']}  kernel {img['kernel_version']}{where}"))
    for role, meta in img["files"].items():
        out.print(
            f"  {role:<7} {meta['file']:<11} {format_size(meta['bytes']):>6}"
            f"  sha256 {meta['sha256']}"
        )
    out.print("  packages: " + ", ".join(f"{k} {v}" for k, v in sorted(img["packages"].items())))


@app.command()
def verify(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Check every file of an image against its recorded checksum."""
    with Client() as client:
        res = client.request("POST", f"/v1/images/{name}/verify")
    if fmt == Format.json:
        output.print_json(res)
    else:
        out.print(f"{name}: " + ("ok" if res["ok"] else "BROKEN: " + "; ".join(res["problems"])))
    raise typer.Exit(0 if res["ok"] else 1)


@app.command()
def delete(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Delete an image (refused while instances use it)."""
    with Client() as client:
        img = client.request("DELETE", f"/v1/images/{name}")
    if fmt == Format.json:
        output.print_json(img)
    else:
        out.print(f"image {name} deleted")
