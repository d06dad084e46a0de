"""`gureum ui`'s tunnel: a loopback port passed to the console socket, for the user running it
only (review: any local user could connect, use a sign-in code read from a browser's command
line, or hold every slot)."""

from __future__ import annotations

import asyncio
import os
import subprocess

from gureum.cli.ui import tunnel

CONNECT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
try:
    s.sendall(b"ping")
    print(s.recv(16).decode() or "closed")
except ConnectionError:  # closed with our bytes unread: a reset
    print("closed")
"""


def test_the_tunnel_serves_its_own_user_and_closes_on_others(tmp_path):
    sock = tmp_path / "ui.sock"

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong:" + await reader.read(4))
        await writer.drain()
        writer.close()

    async def run() -> tuple[str, str]:
        server = await asyncio.start_unix_server(echo, str(sock))
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(tunnel(sock, 0, ready))
        port = await ready

        def connect(uid: int | None) -> str:
            return subprocess.run(
                ["/usr/bin/python3", "-c", CONNECT, str(port)],  # nobody may not read the venv
                capture_output=True, text=True, timeout=20, cwd="/",
                preexec_fn=(lambda: os.setuid(uid)) if uid is not None else None,
            ).stdout.strip()  # fmt: skip

        try:
            mine = await asyncio.to_thread(connect, None)
            other = await asyncio.to_thread(connect, 65534)  # nobody
        finally:
            serving.cancel()
            server.close()
        return mine, other

    mine, other = asyncio.run(run())
    assert mine == "pong:ping"
    assert other == "closed"
