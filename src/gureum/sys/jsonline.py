"""One JSON line each way over TLS: the cluster's wire, both ends.

The control plane's cluster port (agents join and report) and each host agent's command port
(the control plane asks) speak it: one request per connection, one JSON object per line, an
answer ``{"error": {"code", "message"}}`` for a refusal. A request is bounded in size and time
and so are the connections served at once, so that an address that can reach a port cannot
stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from gureum.errors import GureumError, Unauthenticated, Unavailable, from_code

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
MAX_ANSWER = 1 << 20

# What answers a request: the request and the TLS connection (whose peer certificate says who
# asks); raises GureumError to refuse.
Answer = Callable[[dict[str, Any], ssl.SSLObject | None], Awaitable[dict[str, Any]]]


class LineServer:
    def __init__(self, answer: Answer, ctx: ssl.SSLContext) -> None:
        self.answer, self.ctx = answer, ctx
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (``port`` 0: one the system chose)."""
        self.server = await asyncio.start_server(
            self._serve, host, port, ssl=self.ctx, limit=MAX_REQUEST
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                answer = await self.answer(request, writer.get_extra_info("ssl_object"))
            except GureumError as exc:
                answer = {"error": {"code": exc.code, "message": exc.message}}
            except (TimeoutError, ValueError, ConnectionError, ssl.SSLError) as exc:
                answer = {"error": {"code": "invalid-input", "message": f"bad request: {exc}"}}
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
            writer.close()


def ask(
    address: str, request: dict[str, Any], ctx: ssl.SSLContext, server_name: str
) -> dict[str, Any]:
    """One request to ``HOST:PORT``, whose certificate must be issued for ``server_name``; its
    answer (GureumError with the answer's code if it refused). Blocking: from async code, run
    it in a thread."""
    host, _, port = address.rpartition(":")
    try:
        with (
            socket.create_connection(
                (host.strip("[]"), int(port)), timeout=REQUEST_TIMEOUT_S
            ) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ssl.SSLCertVerificationError as exc:
        raise Unauthenticated(f"{address} is not the cluster's {server_name}: {exc}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach {server_name} at {address}: {exc}") from exc
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unavailable(f"{server_name} at {address} gave no answer") from None
    if not isinstance(answer, dict):
        raise Unavailable(f"{server_name} at {address} gave no answer")
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        raise from_code(str(error.get("code"))[:64], str(error.get("message"))[:1000])
    return answer


def tls_context(
    server: bool, ca_pem: str, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """TLS 1.3 checking the peer against the cluster CA (a server: a client certificate asked
    for, and checked when given; the caller says whether one is needed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if server:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
