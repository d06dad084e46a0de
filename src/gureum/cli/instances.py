"""Instance commands: launch, list, show, exec, console, stop, start, restart, delete."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gureum.cli import output
from gureum.cli.console import run_console
from gureum.cli.output import Format, OutputOpt, bold, err, out
from gureum.client.client import Client
from gureum.errors import InvalidInput
from gureum.units import GIB, MIB, parse_size

NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Return at once; do not wait for the guest.")
]


def _mib(text: str) -> int:
    size = parse_size(text, default_unit="M", what="memory")
    if size % MIB:
        raise InvalidInput(f"memory must be a whole number of MiB, not {text!r}")
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
            list[str] | None, typer.Option("--ssh-key", help="OpenSSH public key (repeatable).")
        ] = None,
        no_wait: NoWait = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Create and boot a VM; returns when its guest agent answers (unless --no-wait)."""
        disk_gib = None if disk is None else parse_size(disk, default_unit="G", what="disk") / GIB
        extra: dict[str, object] = {
            "networks": network or [],
            "secgroups": secgroup or [],
            "ssh_keys": ssh_key or [],
        }
        if user_data is not None:
            if not user_data.is_file():
                raise InvalidInput(f"{user_data} is not a file")
            extra["user_data"] = user_data.read_text()
        with Client() as client:
            res = client.launch(
                name, image, cpus=cpus, memory_mib=_mib(memory), disk_gib=disk_gib, **extra
            )
            if no_wait:
                _show_instance(
                    res["instance"] | {"operation": res["operation"]["id"]}, fmt, brief=True
                )
                return
            if fmt == Format.table:
                err.print(
                    f"Launching {name} from {image} ({cpus} vCPU, {memory}, "
                    f"operation {res['operation']['id']})"
                )
            op = output.follow(client, res["operation"])
            inst = op["result"]["instance"]
            if fmt == Format.json:
                output.print_json(inst)
                return
            out.print(
                bold(
                    name,
                    f" is running ({inst['accel']}), ready in {inst['boot']['total_s']:.2f} s",
                    style="bold green",
                )
            )
            for line in output.boot_lines(inst["boot"]):
                out.print(line)

    @app.command("list")
    def list_(fmt: OutputOpt = Format.table) -> None:
        """List instances."""
        with Client() as client:
            items = client.instances()
        if fmt == Format.json:
            output.print_json(items)
        elif not items:
            err.print("No instances. Launch one with `gureum launch tiny --name web1`.")
        else:
            output.instance_rows(items)

    @app.command()
    def show(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Show one instance, with its boot timeline."""
        with Client() as client:
            _show_instance(client.instance(name), fmt)

    def _action(action: str, name: str, no_wait: bool, fmt: Format) -> None:
        with Client() as client:
            op = client.action(name, action)
            if no_wait:
                _show_op(op, fmt)
                return
            op = output.follow(client, op, quiet=fmt == Format.json)
            inst = client.instance(name)
        if fmt == Format.json:
            output.print_json(inst)
        else:
            total = inst["boot"]["total_s"] if inst["state"] == "running" else None
            out.print(f"{name} is {inst['state']}" + (f", ready in {total:.2f} s" if total else ""))

    @app.command()
    def start(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        no_wait: NoWait = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Boot a stopped (or crashed) VM; returns when it is ready."""
        _action("start", name, no_wait, fmt)

    @app.command()
    def stop(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        no_wait: NoWait = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Power a VM off: ACPI power button, then quit, then kill if it will not stop."""
        _action("stop", name, no_wait, fmt)

    @app.command()
    def restart(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        no_wait: NoWait = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Stop (if running) and start again; returns when it is ready."""
        _action("restart", name, no_wait, fmt)

    @app.command()
    def delete(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        force: Annotated[
            bool, typer.Option("--force", "-f", help="Kill it first if running.")
        ] = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Delete a VM with its disk. A running VM needs --force."""
        with Client() as client:
            gone = client.delete(name, force=force)
        if fmt == Format.json:
            output.print_json(gone)
        else:
            out.print(f"{gone['name']} deleted")

    @app.command("exec", context_settings={"ignore_unknown_options": True})
    def exec_(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
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
        with Client() as client:
            res = client.exec(name, command, stdin=data, timeout=timeout)
        if fmt == Format.json:
            output.print_json(
                {
                    **res,
                    "stdout": res["stdout"].decode(errors="replace"),
                    "stderr": res["stderr"].decode(errors="replace"),
                }
            )
        else:
            sys.stdout.buffer.write(res["stdout"])
            sys.stdout.flush()
            sys.stderr.buffer.write(res["stderr"])
            sys.stderr.flush()
        raise typer.Exit(res["exit_code"])

    @app.command()
    def console(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        log: Annotated[bool, typer.Option("--log", help="Print the console log and exit.")] = False,
        tail: Annotated[int, typer.Option(help="With --log: last N bytes (0 = all).")] = 65536,
    ) -> None:
        """Attach to the VM's serial console. Detach with Ctrl-] (the session stays).

        Without a terminal (piped stdin), sends stdin, prints what comes back until the console
        is quiet for a second, and exits.
        """
        if log:
            with Client() as client:
                sys.stdout.write(client.console_log(name, tail))
            return
        raise typer.Exit(run_console(name))


def _show_instance(inst: dict, fmt: Format, brief: bool = False) -> None:
    if fmt == Format.json:
        output.print_json(inst)
    elif brief:
        out.print(
            f"{inst['name']} ({inst['id']}) is {inst['state']}; operation {inst.get('operation')}"
        )
    else:
        output.instance_detail(inst)


def _show_op(op: dict, fmt: Format) -> None:
    if fmt == Format.json:
        output.print_json(op)
    else:
        out.print(f"operation {op['id']} ({op['kind']}) is {op['status']}")
