"""`gureum ui`: open the web console in a browser, signed in as whoever runs the command.

On the service's own host (the local socket) it listens on a loopback port and passes each
connection to the service's console socket (``$GUREUM_HOME/ui.sock``), where every request
needs a session or a token just as over TCP: the tunnel gives a browser no identity of its own.
It prints a URL with a one-time code (a minute, used once) that signs the browser in as the
caller. Against a remote service (over TLS) it prints the remote's URL with such a code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from gureum.cli.output import Format, OutputOpt, err
from gureum.client.client import Client, Endpoint

MAX_CONNECTIONS = 64  # a browser opens a few; the rest wait for one to end


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ConnectionError):
        writer.close()


def loopback_peer_uid(peer_port: int, server_port: int) -> int | None:
    """The user owning the other end of a loopback TCP connection to ``server_port``: the
    socket bound to 127.0.0.1:``peer_port`` connected to 127.0.0.1:``server_port``, as the
    kernel lists it in /proc/net/tcp (addresses in hex, uid in the eighth column)."""
    local, remote = f"0100007F:{peer_port:04X}", f"0100007F:{server_port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[1] == local and fields[2] == remote:
                return int(fields[7])
    return None


async def tunnel(socket_path: Path, port: int, ready: asyncio.Future[int] | None = None) -> None:
    """Pass each connection to 127.0.0.1:``port`` (0: any free port) to the console socket,
    until cancelled. Only the user running it is served: another local user who connects (to
    use a sign-in code they read, or to hold every slot) is closed at once."""
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    me = os.getuid()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        own = writer.get_extra_info("sockname")
        if loopback_peer_uid(peer[1], own[1]) != me:
            writer.close()
            return
        async with slots:
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(str(socket_path))
            except OSError as exc:
                err.print(f"cannot reach the service's console socket {socket_path}: {exc}")
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    async with server:
        await server.serve_forever()


def register(app: typer.Typer) -> None:
    @app.command()
    def ui(
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Loopback port (0: a free one).")
        ] = 0,
        open_browser: Annotated[
            bool, typer.Option("--open", help="Open the URL in this machine's browser.")
        ] = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Open the web console: prints a URL that signs a browser in as you, once, within a
        minute (-o json: {"url", "tunnel"}). On the service's host it serves that URL on
        127.0.0.1 (a tunnel to the service; every request still needs the session) until
        Ctrl-C."""

        def say(url: str, tunnel: bool) -> None:
            if fmt == Format.json:
                sys.stdout.write(json.dumps({"url": url, "tunnel": tunnel}) + "\n")
            else:
                sys.stdout.write(url + ("\n(the console, until Ctrl-C)\n" if tunnel else "\n"))
            sys.stdout.flush()
            if open_browser:
                # A browser's command line is every local user's to read: a remote's code is
                # not put there (its page asks for a token); the tunnel serves only this user.
                webbrowser.open(url if tunnel else url.split("#")[0])

        endpoint = Endpoint.from_env()
        client = Client(endpoint)
        with client:
            code = client.sign_in_code()
        if endpoint.socket is None:  # a remote service: its own console, over TLS
            say(client.console_url(code), tunnel=False)
            return
        socket_path = endpoint.socket.parent / "ui.sock"

        async def run() -> None:
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            serving = asyncio.create_task(tunnel(socket_path, port, ready))
            bound = await asyncio.wait_for(asyncio.shield(ready), 10)
            # localhost, not 127.0.0.1: browsers keep a Secure cookie for http://localhost.
            say(client.console_url(code, f"http://localhost:{bound}"), tunnel=True)
            await serving

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
