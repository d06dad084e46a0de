"""``gureum ssh``: the system's OpenSSH client, through the service, with the guest's own keys.

OpenSSH does the login, the terminal and the exit code. gureum gives it three things: the way in
(``ssh-proxy``, a ProxyCommand that joins ssh's stdin and stdout to the service's tunnel to the
guest's port 22, so the host needs no address on the VM's network), the user (the image's
default user) and the only host keys to accept (those the guest reported through its agent,
written to a known-hosts file of this session alone; a different key is refused by ssh itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from websockets.exceptions import ConnectionClosed

from gureum.cli.output import call
from gureum.client.client import Client, Endpoint, connect_ssh_tunnel, refusal


def register(app: typer.Typer) -> None:
    @app.command("ssh", context_settings={"ignore_unknown_options": True})
    def ssh(
        name: Annotated[str, typer.Argument(help="Instance name or id.")],
        command: Annotated[
            list[str] | None, typer.Argument(help="A command to run instead of a shell (after --).")
        ] = None,
        identity: Annotated[
            Path | None,
            typer.Option("--identity", "-i", help="Private key file (as ssh -i); default: ssh's."),
        ] = None,
        user: Annotated[
            str | None, typer.Option("--user", "-l", help="Log in as (default: the image's user).")
        ] = None,
    ) -> None:
        """Log in to a VM with OpenSSH, or run one command: exits with its exit code.

        The VM needs an image with an SSH server (debian) and your public key (launch
        --ssh-key). The connection goes through the service to the VM's first NIC (no route
        from the host is needed), and ssh accepts only the host keys the guest itself reported.

        Examples: gureum ssh web1 | gureum ssh web1 -- cloud-init status --long

        No -o json: what it prints is the guest's (and ssh's) own output.
        """
        access = call(Client.ssh_access, name)
        alias = f"gureum-{access['id']}"
        with tempfile.TemporaryDirectory(prefix="gureum-ssh-") as folder:
            known = Path(folder) / "known_hosts"
            known.write_text("".join(f"{alias} {key}\n" for key in access["host_keys"]))
            proxy = shlex.join([sys.executable, "-m", "gureum.cli.main", "ssh-proxy", access["id"]])
            argv = ["ssh", "-o", f"ProxyCommand={proxy}", "-o", f"HostKeyAlias={alias}",
                    "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
                    "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
                    "-l", user or access["user"]]  # fmt: skip
            if identity is not None:
                argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
            argv.append(alias)
            argv += command or []
            code = subprocess.run(argv, check=False).returncode
        raise typer.Exit(code)

    @app.command("ssh-proxy", hidden=True)
    def ssh_proxy(name: Annotated[str, typer.Argument(help="Instance name or id.")]) -> None:
        """stdin and stdout joined to the VM's SSH port, through the service (ProxyCommand).
        No -o json: it carries ssh's own bytes."""
        raise typer.Exit(asyncio.run(_proxy(name, Endpoint.from_env())))


async def _proxy(ref: str, endpoint: Endpoint) -> int:
    ws = await connect_ssh_tunnel(endpoint, ref)
    loop = asyncio.get_running_loop()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    done = asyncio.Event()
    failed = 0
    sending: set[asyncio.Task[None]] = set()

    async def receive() -> None:
        nonlocal failed
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, str):  # the only text frame is an error
                    sys.stderr.write(f"error: {refusal(message)}\n")
                    failed = 1
                    break
                view = memoryview(message)
                while view:  # a pipe to ssh: blocking writes, in order
                    view = view[os.write(stdout, view) :]
        done.set()

    def on_stdin() -> None:
        data = os.read(stdin, 65536)
        if not data:  # ssh closed its end: the session is over
            loop.remove_reader(stdin)
            done.set()
            return
        task = asyncio.ensure_future(ws.send(data))
        sending.add(task)
        task.add_done_callback(sending.discard)

    receiver = asyncio.create_task(receive())
    loop.add_reader(stdin, on_stdin)
    try:
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(stdin)
        receiver.cancel()
        with contextlib.suppress(BaseException):
            await ws.close()
    return failed
