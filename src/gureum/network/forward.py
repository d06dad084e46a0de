"""Port forwards: a host loopback port relayed to a port of a VM in its network's namespace.

The listening socket is on the host's loopback; each accepted connection is relayed over a
socket created inside the VM's network namespace, so nothing routes between the host and the
network: the namespaces stay sealed and no NAT rule is needed. Forwards live in the service
process and are re-opened when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from gureum.errors import Conflict
from gureum.network import netns

log = logging.getLogger(__name__)

# Connections one forward relays at once; more are closed at once (each costs the service two
# file descriptors, and the forward's port is reachable by anyone on the host's loopback).
MAX_CONNECTIONS = 256


async def connect_in(namespace: str, ip: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to ``ip:port`` made from inside ``namespace`` (a socket belongs to the
    namespace it was created in), non-blocking; raises OSError or TimeoutError."""
    sock = await netns.arun_in(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


class Forward:
    def __init__(
        self, host: str, port: int, namespace: str, target_ip: str, target_port: int
    ) -> None:
        self.host, self.port = host, port
        self.namespace, self.target_ip, self.target_port = namespace, target_ip, target_port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise Conflict(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if len(self._conns) >= MAX_CONNECTIONS:
            client_w.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            try:
                sock = await connect_in(self.namespace, self.target_ip, self.target_port)
            except (OSError, TimeoutError):
                client_w.close()
                return
            vm_r, vm_w = await asyncio.open_connection(sock=sock)
            await asyncio.gather(_pipe(client_r, vm_w), _pipe(vm_r, client_w))
            vm_w.close()
        except Exception:
            log.exception("port forward %s:%s failed", self.host, self.port)
        finally:
            client_w.close()
            self._conns.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._conns):
            task.cancel()
