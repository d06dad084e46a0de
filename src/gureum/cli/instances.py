"""Instance commands: launch, list, show, exec, console, stop, start, restart, delete."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gureum.cli import output
from gureum.cli.console import run_console
from gureum.cli.output import (
    Format,
    OutputOpt,
    bold,
    call,
    emit,
    err,
    lines,
    read_size,
    usage_error,
)
from gureum.client.client import Client
from gureum.model.sshkeys import public_key
from gureum.units import GIB, MIB

Name = Annotated[str, typer.Argument(help="Instance name or id.")]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Return at once; do not wait for the guest.")
]


def public_keys(given: str, option: str) -> list[str]:
    """A public key line as it is, or the key lines of a file (``~/.ssh/id_ed25519.pub``).

    A private key never leaves this machine: a file holding one (the ``.pub`` forgotten) is
    refused before anything is sent, and what was given is not repeated in the error (a key
    pasted as the argument would be printed back)."""
    if given.startswith(("ssh-", "ecdsa-", "sk-")):
        return [given]
    if "PRIVATE KEY" in given:
        raise usage_error(f"{option}: that is a private key: give the public one (nothing sent)")
    path = Path(given).expanduser()
    try:
        found = path.is_file()
    except OSError:  # a name too long for a file (a pasted key): its error would repeat it
        found = False
    if not found:
        raise usage_error(f"{option}: neither a public key line nor a file")
    text = path.read_text(errors="replace")
    if "PRIVATE KEY" in text:
        raise usage_error(f"{option}: {path} is a private key: give its .pub file (nothing sent)")
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys or any(public_key(k) is None for k in keys):
        raise usage_error(f"{option}: {path} is not a public key file (one key a line)")
    return keys


def memory_in_mib(text: str) -> int:
    """--memory, in MiB: a usage error unless it is a whole number of them."""
    size = read_size(text, default_unit="M", what="memory")
    if size % MIB:
        raise usage_error(f"memory must be a whole number of MiB, not {text!r}")
    return size // MIB


def register(app: typer.Typer) -> None:
    @app.command()
    def launch(
        image: Annotated[str, typer.Argument(help="Image to boot, e.g. tiny.")],
        name: Annotated[str, typer.Option("--name", "-n", help="Instance name (its hostname).")],
        cpus: Annotated[int, typer.Option(help="Virtual CPUs.")] = 1,
        memory: Annotated[str, typer.Option(help="Guest memory, e.g. 512M or 1G.")] = "256M",
        disk: Annotated[
            str | None, typer.Option(help="Root disk size, e.g. 2G (default: image's).")
        ] = None,
        network: Annotated[
            list[str] | None, typer.Option("--network", help="Network (repeat for more NICs).")
        ] = None,
        secgroup: Annotated[
            list[str] | None, typer.Option("--secgroup", help="Security group (repeatable).")
        ] = None,
        user_data: Annotated[
            Path | None, typer.Option("--user-data", help="File served at /latest/user-data.")
        ] = None,
        ssh_key: Annotated[
            list[str] | None,
            typer.Option(
                "--ssh-key",
                help="OpenSSH public key: the line, or its .pub file (repeatable).",
            ),
        ] = None,
        keypair: Annotated[
            list[str] | None,
            typer.Option("--keypair", help="The project's key pair, by name (repeatable)."),
        ] = None,
        autostart: Annotated[
            bool,
            typer.Option(help="Start it whenever the host has booted (with the service)."),
        ] = False,
        cold: Annotated[
            bool,
            typer.Option(
                "--cold", help="Boot it, even where the image has a template of this shape."
            ),
        ] = False,
        container: Annotated[
            bool,
            typer.Option(
                "--container",
                help="A system container from the image's files (its own init, on the host's "
                "kernel) instead of a VM.",
            ),
        ] = False,
        host: Annotated[
            str | None,
            typer.Option("--host", help="The host it must go on (default: the scheduler's)."),
        ] = None,
        spread_group: Annotated[
            str | None,
            typer.Option(help="No two instances of this group are placed on one host."),
        ] = None,
        no_wait: NoWait = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Create and start a VM: a clone of the image's template where one of this shape (and
        the image's disk size) exists, else a boot. Returns when its guest agent answers (unless
        --no-wait). With --container, a system container instead: the image's own init in
        namespaces of its own, ready when that init is."""
        disk_gib = None if disk is None else read_size(disk, default_unit="G", what="disk") / GIB
        extra: dict[str, object] = {
            "networks": network or [],
            "secgroups": secgroup or [],
            "ssh_keys": [k for given in ssh_key or [] for k in public_keys(given, "--ssh-key")],
            "keypairs": keypair or [],
            "autostart": autostart,
            "cold": cold,
            "container": container,
            "host": host,
            "spread_group": spread_group,
        }
        if user_data is not None:
            if not user_data.is_file():
                raise usage_error(f"--user-data: {user_data} is not a file")
            extra["user_data"] = user_data.read_text()
        with Client() as client:
            res = client.launch(
                name, image, cpus=cpus, memory_mib=memory_in_mib(memory), disk_gib=disk_gib, **extra
            )
            if no_wait:
                _show_instance(
                    res["instance"] | {"operation": res["operation"]["id"]}, fmt, brief=True
                )
                return
            if fmt == Format.table:
                err.print(
                    f"Launching {'container ' if container else ''}{name} from {image} "
                    f"({cpus} vCPU, {memory}, "
                    f"operation {res['operation']['id']})"
                )
            op = output.follow(client, res["operation"])
        inst = op["result"]["instance"]
        emit(inst, fmt, lambda: _show_ready(inst))

    @app.command("list")
    def list_(
        all_projects: Annotated[
            bool,
            typer.Option(
                "--all-projects", help="Every project's, with a PROJECT column (administrator)."
            ),
        ] = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """List instances (the project's; every project's with --all-projects)."""
        items = call(Client.instances, all_projects)
        empty = "No instances. Launch one with `gureum launch tiny --name web1`."
        if all_projects:
            columns = ["PROJECT", *output.INSTANCE_COLUMNS]
            output.listing(items, fmt, columns, _project_row, empty=empty)
        else:
            output.listing(items, fmt, output.INSTANCE_COLUMNS, output.instance_row, empty=empty)

    @app.command()
    def show(
        name: Name,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Show one instance, with its boot timeline."""
        with Client() as client:
            _show_instance(client.instance(name), fmt)

    for action, doc in ACTIONS.items():
        app.command(action, help=doc)(_action_command(action))

    @app.command()
    def delete(
        name: Name,
        force: Annotated[
            bool, typer.Option("--force", "-f", help="Kill it first if running.")
        ] = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Delete a VM with its disk. A running VM needs --force."""
        gone = call(Client.delete, name, force=force)
        emit(gone, fmt, f"{gone['name']} deleted")

    @app.command("exec", context_settings={"ignore_unknown_options": True})
    def exec_(
        name: Name,
        command: Annotated[list[str], typer.Argument(help="Command and arguments (after --).")],
        stdin: Annotated[
            bool, typer.Option("--stdin", "-i", help="Send this command's stdin.")
        ] = False,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the command.")] = 60.0,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Run a command in the guest: prints its output, exits with its exit code.

        Example: gureum exec web1 -- cat /proc/meminfo
        """
        data = sys.stdin.buffer.read() if stdin else None
        res = call(Client.exec, name, command, stdin=data, timeout=timeout)
        text = {k: res[k].decode(errors="replace") for k in ("stdout", "stderr")}
        emit({**res, **text}, fmt, lambda: _write_raw(res["stdout"], res["stderr"]))
        raise typer.Exit(res["exit_code"])

    @app.command()
    def console(
        name: Name,
        log: Annotated[bool, typer.Option("--log", help="Print the console log and exit.")] = False,
        tail: Annotated[int, typer.Option(help="With --log: last N bytes (0 = all).")] = 65536,
    ) -> None:
        """Attach to the VM's serial console. Detach with Ctrl-] (the session stays).

        Without a terminal (piped stdin), sends stdin, prints what comes back until the console
        is quiet for a second, and exits. No -o json: what it prints is the guest's own bytes,
        as they come (--log too), not data to format. A container's console is its init's
        output, live: it takes no input (run commands with `gureum exec`).
        """
        with Client() as client:
            if log:
                sys.stdout.write(client.console_log(name, tail))
                return
            if client.instance(name).get("type") == "container":
                err.print(f"{name} is a container: its console shows its init's output and "
                          "takes no input (run commands with `gureum exec`).")  # fmt: skip
        raise typer.Exit(run_console(name))


ACTIONS = {
    "start": "Boot a stopped (or crashed) VM; returns when it is ready.",
    "stop": "Power a VM off: ACPI power button, then quit, then kill if it will not stop.",
    "restart": "Stop (if running) and start again; returns when it is ready.",
}


def _action_command(action: str) -> Callable[..., None]:
    """``gureum start``, ``stop`` or ``restart``: the action, then (unless --no-wait) its
    progress and the state it left the VM in."""

    def command(name: Name, no_wait: NoWait = False, fmt: OutputOpt = Format.table) -> None:
        with Client() as client:
            op = client.action(name, action)
            if no_wait:
                _show_op(op, fmt)
                return
            output.follow(client, op, quiet=fmt == Format.json)
            inst = client.instance(name)
        total = inst["boot"]["total_s"] if inst["state"] == "running" else None
        ready = f", ready in {total:.2f} s" if total else ""
        emit(inst, fmt, f"{name} is {inst['state']}{ready}")

    return command


def _project_row(inst: dict) -> list[str]:
    return [inst["project"], *output.instance_row(inst)]


def _show_instance(inst: dict, fmt: Format, brief: bool = False) -> None:
    if brief:
        line = (
            f"{inst['name']} ({inst['id']}) is {inst['state']}; operation {inst.get('operation')}"
        )
        emit(inst, fmt, line)
    else:
        emit(inst, fmt, lambda: output.instance_detail(inst))


def _show_ready(inst: dict) -> None:
    how = f"from template {inst['template_id']}, " if inst.get("template_id") else ""
    runs_on = "container" if inst.get("type") == "container" else inst["accel"]
    ready = f" is running ({runs_on}), {how}ready in {inst['boot']['total_s']:.2f} s"
    heading = bold(inst["name"], ready, style="bold green")
    lines(heading, *output.boot_lines(inst["boot"]))()


def _write_raw(stdout: bytes, stderr: bytes) -> None:
    """What a command wrote in the guest, byte for byte, each to its own stream."""
    sys.stdout.buffer.write(stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(stderr)
    sys.stderr.flush()


def _show_op(op: dict, fmt: Format) -> None:
    emit(op, fmt, f"operation {op['id']} ({op['kind']}) is {op['status']}")
