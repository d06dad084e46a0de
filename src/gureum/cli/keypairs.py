"""``gureum keypair``: a project's SSH public keys, kept under names for launches to name."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gureum.cli import output
from gureum.cli.instances import public_keys
from gureum.cli.output import Format, OutputOpt, call, emit, listing, usage_error
from gureum.client.client import Client

app = typer.Typer(
    help="SSH key pairs of the project: `launch --keypair NAME` gives a VM that key.",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="Key pair name.")]


@app.command()
def add(
    name: Name,
    public_key: Annotated[
        str,
        typer.Argument(help="The public key: its line, or its .pub file (~/.ssh/id_ed25519.pub)."),
    ],
    fmt: OutputOpt = Format.table,
) -> None:
    """Keep a public key under a name (never a private key: it is refused, and not echoed)."""
    keys = public_keys(public_key, "PUBLIC_KEY")
    if len(keys) != 1:
        raise usage_error(f"a key pair is one key: {public_key} holds {len(keys)}")
    pair = call(Client.add_keypair, name, keys[0])
    emit(pair, fmt, f"key pair {name} added: {pair['fingerprint']}")


@app.command("list")
def list_(fmt: OutputOpt = Format.table) -> None:
    """The project's key pairs with their fingerprints."""
    listing(call(Client.keypairs), fmt, ["NAME", "FINGERPRINT", "AGE"], _row)


def _row(p: dict[str, Any]) -> list[str]:
    return [p["name"], p["fingerprint"], output.age(p["created_at"])]


@app.command()
def delete(name: Name, fmt: OutputOpt = Format.table) -> None:
    """Forget a key pair. VMs launched with it keep its key."""
    emit(call(Client.delete_keypair, name), fmt, f"key pair {name} deleted")
