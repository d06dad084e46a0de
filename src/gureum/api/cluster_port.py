"""The control plane's cluster port: where host agents join and report (issue 17, part 1).

TLS with the control plane's certificate from the cluster CA; a client certificate is asked
for, and when one is given TLS checks it against that CA. One request per connection, one JSON
line each way:

- ``{"op": "ca"}``: the CA certificate, which an agent checks against its join token's
  fingerprint before it sends anything secret;
- ``{"op": "join", "secret", "csr"}``: a join token's secret and a certificate request: the
  agent's certificate (``service/enrolment.py``);
- ``{"op": "heartbeat", "facts"}``: with the agent's certificate only: what its host has.

A request is bounded (64 KiB, 10 s) and so are the connections served at once, so an address
that can reach the port cannot stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

from gureum.errors import GureumError
from gureum.model.cluster import CONTROL_PLANE
from gureum.service.cluster_ca import ClusterCA
from gureum.service.enrolment import EnrolmentService

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64


def server_context(ca: ClusterCA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cert, key = ca.control_plane_files
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cadata=ca.pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL  # joining agents have none yet
    return ctx


class ClusterPort:
    def __init__(self, ca: ClusterCA, enrolment: EnrolmentService) -> None:
        self.ca, self.enrolment = ca, enrolment
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (``port`` 0: one the system chose)."""
        self.ca.ensure()
        self.server = await asyncio.start_server(
            self._serve, host, port, ssl=server_context(self.ca), limit=MAX_REQUEST
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
                answer = await self._answer(reader, writer)
            except GureumError as exc:
                answer = {"error": {"code": exc.code, "message": exc.message}}
            except (TimeoutError, ValueError, ConnectionError, ssl.SSLError) as exc:
                answer = {"error": {"code": "invalid-input", "message": f"bad request: {exc}"}}
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
            writer.close()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        op = request.get("op")
        if op == "ca":
            return {"ca": self.ca.pem.decode(), "name": CONTROL_PLANE}
        if op == "join":
            return self.enrolment.join(request.get("secret"), request.get("csr"))
        if op == "heartbeat":
            tls = writer.get_extra_info("ssl_object")
            peer = tls.getpeercert(binary_form=True) if tls is not None else None
            host = self.enrolment.heartbeat(peer, request.get("facts"))
            return {"ok": True, "host": host}
        raise ValueError(f"no operation {str(op)[:40]!r}")
