"""The ``gureum`` command: a thin client of the API (and ``serve``, which runs it)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from gureum.cli import images, instances, networks, recovery, system, tenancy
from gureum.client.client import ApiError
from gureum.errors import GureumError

app = typer.Typer(
    name="gureum",
    help=(
        "gureum: real virtual machines on one host.\n\n"
        "Start the service with `gureum serve`, build an image with `gureum image build tiny`, "
        "then `gureum launch tiny --name web1`. State lives in $GUREUM_HOME "
        "(default /var/lib/gureum); GUREUM_URL points the CLI at a TCP service instead."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
instances.register(app)
recovery.register(app)
networks.register(app)
tenancy.register(app)
system.register(app)
app.add_typer(images.app, name="image")


@app.callback()
def _global(
    project: Annotated[
        str | None, typer.Option("--project", help="Project to act in (or GUREUM_PROJECT).")
    ] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", help="Remote service to talk to (or GUREUM_REMOTE).")
    ] = None,
) -> None:
    """Options that apply to every command."""
    if project:
        os.environ["GUREUM_PROJECT"] = project
    if remote:
        os.environ["GUREUM_REMOTE"] = remote


def main() -> None:
    try:
        app()
    except ApiError as exc:
        sys.stderr.write(f"error: {exc.message}" + (f" [{exc.code}]" if exc.code else "") + "\n")
        sys.exit(1)
    except GureumError as exc:
        sys.stderr.write(f"error: {exc.message} [{exc.code}]\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
