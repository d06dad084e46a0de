"""The ``gureum`` command: a thin client of the API (and ``serve``, which runs it)."""

from __future__ import annotations

import os
import sys
from enum import IntEnum, StrEnum
from typing import Annotated, NoReturn

import typer
from typer._click import exceptions as click  # the click typer carries (and raises)
from typer.completion import completion_init, get_completion_script

from gureum import __version__
from gureum.cli import (
    compare,
    events,
    images,
    instances,
    keypairs,
    networks,
    recovery,
    ssh,
    system,
    tenancy,
    ui,
)
from gureum.client.client import ApiError, ServiceDown
from gureum.errors import GureumError


class ExitCode(IntEnum):
    """What ``gureum`` exits with when it fails (docs/cli.md lists them); ``exec`` exits with
    the guest command's own code."""

    FAILED = 1  # anything else: a bad value the service refused, a failed operation...
    USAGE = 2  # a bad option, a missing argument: nothing was sent
    NOT_FOUND = 3  # no such VM, image, snapshot, project...
    REFUSED = 4  # valid, but not now or not for you: conflict, state, quota, capacity, role
    UNREACHABLE = 5  # no service at the address, or not the one whose certificate is pinned
    COMMAND_NOT_FOUND = 127  # exec: the guest cannot start the command (as a shell exits)
    INTERRUPTED = 130  # Ctrl-C


REFUSED = {
    "conflict",
    "invalid-state",
    "quota-exceeded",
    "insufficient-capacity",
    "forbidden",
    "unauthenticated",
}


def exit_for(code: str) -> ExitCode:
    """The exit code for an error code (the API's, or the CLI's own)."""
    if code == "untrusted":
        return ExitCode.UNREACHABLE
    if code == "not-found":
        return ExitCode.NOT_FOUND
    if code in REFUSED:
        return ExitCode.REFUSED
    if code == "command-not-found":
        return ExitCode.COMMAND_NOT_FOUND
    if code == "usage":
        return ExitCode.USAGE
    return ExitCode.FAILED


def exit_code(exc: ApiError | GureumError) -> ExitCode:
    """The exit code for an error: the service not there is not its guest agent not there,
    though both say `unavailable`."""
    return ExitCode.UNREACHABLE if isinstance(exc, ServiceDown) else exit_for(exc.code)


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
ssh.register(app)
recovery.register(app)
networks.register(app)
tenancy.register(app)
system.register(app)
compare.register(app)
events.register(app)
ui.register(app)
app.add_typer(images.app, name="image")
app.add_typer(keypairs.app, name="keypair")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"gureum {__version__}\n")  # what GET /v1/version answers
        raise typer.Exit()


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"


completion_init()  # typer's completion, which its scripts talk to, without its --install option


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="bash or zsh.")]) -> None:
    """Print the shell completion script. No -o json: it is shell code.

    bash: eval "$(gureum completion bash)" in ~/.bashrc;
    zsh: eval "$(gureum completion zsh)" in ~/.zshrc (after compinit).
    """
    script = get_completion_script(prog_name="gureum", complete_var="_GUREUM_COMPLETE", shell=shell)
    sys.stdout.write(script + "\n")


@app.callback()
def _global(
    project: Annotated[
        str | None, typer.Option("--project", help="Project to act in (or GUREUM_PROJECT).")
    ] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", help="Remote service to talk to (or GUREUM_REMOTE).")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options that apply to every command."""
    if project:
        os.environ["GUREUM_PROJECT"] = project
    if remote:
        os.environ["GUREUM_REMOTE"] = remote


def fail(message: str, code: str, status: int) -> NoReturn:
    """Every failure looks the same: ``error: <message> [<code>]`` on stderr, and its exit code."""
    sys.stderr.write(f"error: {message}" + (f" [{code}]" if code else "") + "\n")
    sys.exit(status)


def main(args: list[str] | None = None) -> None:
    try:
        # Not standalone: click would print usage errors its own way (a box, on two lines).
        status = app(args=args, prog_name="gureum", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # `gureum image`: its help (rich prints it itself)
        if exc.format_message().strip():
            sys.stdout.write(exc.format_message() + "\n")
        status = ExitCode.USAGE
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        said = exc.format_message().replace("Value error, ", "").rstrip(".")  # pydantic's prefix
        fail(said + hint, "usage", ExitCode.USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), "usage", ExitCode.USAGE)
    except typer.Abort:
        fail("aborted", "", ExitCode.INTERRUPTED)
    except (ApiError, GureumError) as exc:
        fail(exc.message, exc.code, exit_code(exc))
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
