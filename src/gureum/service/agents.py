"""The control plane asking host agents, on their command ports (``host/agent_port.py``).

It connects to the address each host was enrolled with, presents its own ``control-plane``
certificate and checks that the agent's was issued by the cluster CA for that very host: an
address taken over by another enrolled host, or by anything else, is refused before a request
is sent.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from gureum.errors import NotFound
from gureum.host.remote import RemoteHostAgent
from gureum.service.cluster_ca import ClusterCA
from gureum.store.hosts import HostStore
from gureum.sys.jsonline import Pool, tls_context


class Agents:
    def __init__(self, ca: ClusterCA, store: HostStore) -> None:
        self.ca, self.store = ca, store
        self._tls: ssl.SSLContext | None = None
        self.pool = Pool()  # idle connections to agents' command ports, for the next command

    def _context(self) -> ssl.SSLContext:
        """TLS as the control plane: its own certificate, the agent's checked against the CA.
        Made once (reading the files and building it took 2.5 ms of every command here); the
        files it is made from do not change while the control plane runs."""
        if self._tls is None:
            cert, key = self.ca.control_plane_files
            self._tls = tls_context(False, self.ca.pem.decode(), str(cert), str(key))
        return self._tls

    def host(self, name: str) -> RemoteHostAgent:
        """The joined host's ``HostAgent``, as the control plane drives it."""
        rec = self.store.get(name)
        if rec is None or rec.address is None:
            raise NotFound(f"no joined host named {name!r}")
        return RemoteHostAgent(name, rec.address, self._context, rec.accel, self.pool)

    async def ask(self, host: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to a joined host's agent (``RemoteHostAgent.ask``)."""
        return await self.host(host).ask(request)

    async def check(self, host: str) -> dict[str, Any]:
        """Whether the control plane reaches the host's agent: what it answers and how fast
        (over an idle kept connection if there is one, as commands go; else a new one, TLS
        included)."""
        began = time.monotonic()
        answer = await self.ask(host, {"op": "facts"})
        return {
            "host": host,
            "round_trip_ms": round((time.monotonic() - began) * 1000, 1),
            "facts": answer,
        }
