"""Service-level commands: serve, host, operation."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from gureum.cli import output
from gureum.cli.output import Format, OutputOpt, bold, call, emit, lines, listing, usage_error
from gureum.client.client import Client
from gureum.errors import GureumError

if TYPE_CHECKING:
    from gureum.config import Config
    from gureum.host.interface import HostAgent

operation_app = typer.Typer(
    help="Follow long work: launches, stops, image builds.", no_args_is_help=True
)


def service_log_handler(path: Path) -> logging.Handler:
    """The service's log file, root's alone (0600): it names every tenant's instances, projects
    and users. Made so before the first line is written (the service's own umask is set only
    later), and put right if an older file was readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return logging.FileHandler(path)


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    ) -> None:
        """Run the gureum service (HTTP API on $GUREUM_HOME/gureum.sock; TCP if GUREUM_LISTEN).

        VMs run in their own processes and keep running when the service stops; the next
        `gureum serve` re-adopts them. No -o json: it runs until stopped and prints its log,
        not data.
        """
        from gureum.api.app import serve as run_server
        from gureum.config import load_config

        config = load_config()
        config.home.mkdir(parents=True, exist_ok=True)
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        handlers.append(service_log_handler(config.log_path))
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            handlers=handlers,
        )
        asyncio.run(run_server(config))

    app.command("agent")(agent)
    app.add_typer(host_app, name="host")
    app.add_typer(operation_app, name="operation")


HEARTBEAT_S = 10.0  # as often as the control plane's own host reports

host_app = typer.Typer(
    help="The host: accelerator, capacity, what VMs have committed, the pool of waiting QEMUs; "
    "the hosts instances are placed on (list, enroll, check, cordon, uncordon).",
    invoke_without_command=True,
)


@host_app.callback()
def host(ctx: typer.Context, fmt: OutputOpt = Format.table) -> None:
    """Show the host: accelerator, capacity and what VMs have committed."""
    if ctx.invoked_subcommand is None:
        info = call(Client.host)
        emit(info, fmt, lines(*_host_lines(info)))


@host_app.command("list")
def host_list(fmt: OutputOpt = Format.table) -> None:
    """The hosts instances are placed on: state, accelerator, capacity and use (administrator)."""
    columns = ["NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "INSTANCES"]
    listing(call(Client.hosts), fmt, columns, _host_row)


def _host_row(h: dict[str, Any]) -> list[str]:
    cap, used = h["capacity"], h["committed"]
    return [
        h["name"] + (" (this one)" if h["local"] else ""),
        h["state"],
        h["accel"],
        f"{used['cpus']}/{cap['vcpu_limit']}",
        f"{used['memory_mib']}/{cap['memory_limit_mib']} MiB",
        str(h["instances"]),
    ]


HostName = Annotated[str, typer.Argument(help="The host's name, as `gureum host list` shows.")]


@host_app.command("enroll")
def enroll(
    name: HostName,
    address: Annotated[str, typer.Argument(help="HOST:PORT where its agent will answer.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """A join token for a new host (administrator): run `gureum agent --join TOKEN` on it
    within the hour. The token is shown once and works once."""
    made = call(Client.enrol_host, name, address)
    emit(made, fmt, lines(
        bold("Host:", f"   {made['host']}"),
        bold("Token:", f"  {made['token']}"),
        Text("On that host, within the hour: gureum agent --join TOKEN"),
    ))  # fmt: skip


@host_app.command("check")
def check(name: HostName, fmt: OutputOpt = Format.table) -> None:
    """Ask a joined host's agent, as the control plane drives it (administrator); exits 5
    (`untrusted`) if what answers is not that host's agent, 1 (`unavailable`) if nothing
    answers."""
    seen = call(Client.check_host, name)
    facts = seen["facts"]
    emit(seen, fmt, f"host {name}'s agent answered in {seen['round_trip_ms']} ms: "
                    f"{facts.get('cpus')} CPUs, {facts.get('memory_mib')} MiB, "
                    f"{facts.get('accel')}")  # fmt: skip


@host_app.command("cordon")
def cordon(name: HostName, fmt: OutputOpt = Format.table) -> None:
    """Place no new instance on the host; those on it carry on (administrator)."""
    emit(call(Client.set_host_state, name, True), fmt, f"host {name} cordoned")


@host_app.command("uncordon")
def uncordon(name: HostName, fmt: OutputOpt = Format.table) -> None:
    """Place new instances on the host again (administrator)."""
    emit(call(Client.set_host_state, name, False), fmt, f"host {name} ready")


@host_app.command("pool")
def pool(
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            help="QEMUs to keep started and waiting for each template (0 to 16; 0: none). "
            "A launch from a template takes one and skips QEMU's start-up.",
        ),
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Show the pool of waiting QEMUs, or set its size (administrator)."""
    info = call(Client.pool) if size is None else call(Client.resize_pool, size)
    rows = [
        bold("Size:", f"     {info['size']} per template ({info['waiting_qemu_mib']} MiB each)"),
        bold("Waiting:", f"  {info['waiting']}"),
        *(Text(f"  {t['template_id']}: {t['waiting']}") for t in info["templates"]),
        bold("Taken:", f"    {info['taken']} since the service started"),
    ]
    if info["last_error"]:
        rows.append(bold("Short:", f"    {info['last_error']}"))
    emit(info, fmt, lines(*rows))


def _host_lines(info: dict[str, Any]) -> list[Text]:
    cap, used = info["capacity"], info["committed"]
    accel = bold("Accel:", f"   {info['accel']} ({info['accel_reason']})")
    if info.get("view") == "projects":  # a user: their own projects' figures only
        return [
            accel,
            bold("Memory:", f"  {used['memory_mib']} MiB committed in your projects"),
            bold("vCPUs:", f"   {used['cpus']} committed in your projects"),
            bold("VMs:", f"     {info['instances']} in your projects"),
        ]
    return [
        accel,
        bold(
            "Memory:",
            f"  {used['memory_mib']} of {cap['memory_limit_mib']} MiB committed "
            f"(host {cap['memory_mib']} MiB, reserve {cap['memory_reserve_mib']} MiB)",
        ),
        bold(
            "vCPUs:",
            f"   {used['cpus']} of {cap['vcpu_limit']} committed "
            f"({cap['cpus']} CPUs x {cap['cpu_overcommit']:g})",
        ),
        bold("VMs:", f"     {info['instances']}"),
        bold("Store:", f"   {info['store']}"),
    ]


@operation_app.command("list")
def op_list(fmt: OutputOpt = Format.table) -> None:
    """Recent operations."""
    listing(
        call(Client.operations), fmt, ["ID", "KIND", "TARGET", "STATUS", "AGE", "LAST"], _op_row
    )


def _op_row(o: dict[str, Any]) -> list[str]:
    last = (o["error"] or {}).get("message") or (
        o["progress"][-1]["message"] if o["progress"] else ""
    )
    return [o["id"], o["kind"], o["target"], o["status"], output.age(o["created_at"]), last]


OpId = Annotated[str, typer.Argument(help="Operation id (op-...).")]


@operation_app.command("show")
def op_show(op_id: OpId, fmt: OutputOpt = Format.table) -> None:
    """One operation with all its progress."""
    op = call(Client.operation, op_id)
    steps = [f"  {line['message']}" for line in op["progress"]]
    if op["error"]:
        steps.append(f"  error ({op['error']['code']}): {op['error']['message']}")
    emit(op, fmt, lines(f"{op['id']} {op['kind']} {op['target']}: {op['status']}", *steps))


@operation_app.command("wait")
def op_wait(op_id: OpId, fmt: OutputOpt = Format.table) -> None:
    """Wait for an operation, printing its progress; exits non-zero if it failed."""
    with Client() as client:
        op = output.follow(client, client.operation(op_id))
    emit(op, fmt, f"{op['id']} {op['status']}")


def agent(
    join: Annotated[
        str | None,
        typer.Option("--join", help="The token `gureum host enroll` printed (used once)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Report once and exit.")] = False,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="HOST:PORT for the command port (default: the address it was enrolled with).",
        ),
    ] = None,
) -> None:
    """Run this host's agent: join the cluster with a token the first time, then report this
    host's capacity to the control plane every 10 s, and run what the control plane places
    here (VMs from catalog images, their disks and networks), answering it on the command port,
    both over mutual TLS. No -o json: it runs until stopped and prints what it does, not
    data."""
    from gureum.config import load_config
    from gureum.host import enrolment
    from gureum.host.agent import LocalHostAgent

    config = load_config()
    folder = config.agent_dir
    if join is not None:
        if enrolment.joined(folder) is not None:
            raise usage_error(f"this host has joined a cluster already ({folder}/cluster.json)")
        name = enrolment.join(join, folder)
        output.err.print(f"joined the cluster as {name}")
    elif enrolment.joined(folder) is None:
        raise usage_error("this host has not joined a cluster: gureum agent --join TOKEN")
    host = LocalHostAgent(config)
    if once:
        try:
            enrolment.heartbeat(folder, enrolment.facts(host))
        except GureumError as exc:
            output.err.print(f"heartbeat refused or lost: {exc.message}")
            raise typer.Exit(1) from None
        return
    asyncio.run(_run_agent(config, host, listen))


async def _run_agent(config: Config, host: HostAgent, listen: str | None) -> None:
    from gureum.host import enrolment
    from gureum.host.agent_port import AgentPort

    # Each connection to the command port is a descriptor: take all the kernel allows, as
    # serve does (the port bounds the connections it serves).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host.prepare()  # the folders VMs' files go in, as a service's start makes them
    port = AgentPort(config, host)
    try:
        await port.start(listen)
    except OSError as exc:
        raise usage_error(f"cannot listen on {listen or port.address}: {exc}") from None
    output.err.print(f"answering the control plane on {listen or port.address}")
    try:
        while True:
            try:
                facts = enrolment.facts(host)
                await asyncio.to_thread(enrolment.heartbeat, config.agent_dir, facts)
            except GureumError as exc:
                output.err.print(f"heartbeat refused or lost: {exc.message}")
            except Exception as exc:  # a heartbeat that fails never ends the agent
                output.err.print(f"heartbeat failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(HEARTBEAT_S)
    finally:
        await port.stop()
