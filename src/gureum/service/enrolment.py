"""Hosts join the cluster: a single-use join token, a certificate from the cluster's CA, then
heartbeats over mutual TLS (issue 17, part 1).

The administrator enrols a host by name (``gureum host enroll h2 ADDRESS``) and gets a token
that names the control plane's cluster port, the host, a secret and the CA's fingerprint. The
agent (``gureum agent --join TOKEN``) checks it reached the cluster it was told of (the CA's
fingerprint), sends the secret with a certificate request, and gets a certificate for the name
the administrator enrolled, whatever it asked for. The store keeps only the secret's hash; the
token is used once (the UPDATE that uses it decides between two joins racing with it) and
expires. From then on the agent speaks with that certificate only, and the control plane
accepts reports only from a certificate its CA issued to a host the store holds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from gureum.errors import Conflict, InvalidInput, InvalidState, Unauthenticated
from gureum.ids import check_name
from gureum.model.cluster import ADDRESS, CONTROL_PLANE, JoinToken
from gureum.service.cluster_ca import ClusterCA
from gureum.store.hosts import HostStore

JOIN_TOKEN_TTL_S = 3600.0
# What a heartbeat may say, and the bounds of each figure (a forged one cannot poison placement).
FACTS = {"cpus": (0, 1 << 16), "memory_mib": (0, 1 << 40), "memory_reserve_mib": (0, 1 << 40)}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class EnrolmentService:
    def __init__(
        self,
        ca: ClusterCA,
        store: HostStore,
        cluster_listen: str,
        control_planes: Callable[[], list[str]] = list,
    ) -> None:
        self.ca, self.store, self.cluster_listen = ca, store, cluster_listen
        # The cluster ports of the control planes heard from lately (``HostService``'s).
        self.control_planes = control_planes

    def enrol(self, name: str, address: str) -> tuple[str, float]:
        """A join token for host ``name`` whose agent will answer at ``address`` (HOST:PORT),
        and when it expires."""
        check_name(name, what="host name")
        if name == CONTROL_PLANE:
            raise InvalidInput(f"{CONTROL_PLANE!r} is the control plane's own name")
        if not ADDRESS.fullmatch(address):
            raise InvalidInput(f"the agent's address is HOST:PORT, not {address[:80]!r}")
        if not self.cluster_listen:
            raise InvalidState(
                "this control plane has no cluster port for agents to join: set cluster_listen "
                "(GUREUM_CLUSTER_LISTEN=HOST:PORT) and restart it"
            )
        if self.store.get(name) is not None:
            raise Conflict(f"a host named {name!r} is already in the cluster")
        self.ca.ensure()
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + JOIN_TOKEN_TTL_S
        self.store.add_join_token(_hash(secret), name, address, expires, now)
        token = JoinToken(self.cluster_listen, name, secret, self.ca.fingerprint())
        return token.encode(), expires

    def join(self, secret: object, request_pem: object) -> dict[str, Any]:
        """The agent's certificate for a valid, unused token's secret (used now)."""
        if not isinstance(secret, str) or not isinstance(request_pem, str):
            raise InvalidInput("a join is {secret, csr}")
        used = self.store.use_join_token(_hash(secret), time.time())
        if used is None:
            raise Unauthenticated("the join token is unknown, already used or expired")
        name, address = used
        if self.store.get(name) is not None:  # two tokens for one name, both made before
            raise Conflict(f"a host named {name!r} is already in the cluster")
        cert = self.ca.issue(request_pem.encode(), name)
        self.store.enrol(name, address, time.time())
        # The address it was enrolled with: where its command port listens.
        return {"host": name, "cert": cert.decode(), "ca": self.ca.pem.decode(), "address": address}

    def enrolled_host(self, peer_der: bytes | None) -> str:
        """The name of the enrolled host whose agent's certificate this is (Unauthenticated
        for none, another CA's, the control plane's own, or a host the store does not hold)."""
        if peer_der is None:
            raise Unauthenticated("this needs the agent's certificate")
        name = self.ca.name_of(peer_der)
        host = self.store.get(name)
        if name == CONTROL_PLANE or host is None or host.address is None:
            raise Unauthenticated(f"{name!r} is not an enrolled host")
        return name

    def heartbeat(self, peer_der: bytes | None, facts: object) -> str:
        """An enrolled agent's report of what its host has; the host's name."""
        name = self.enrolled_host(peer_der)
        if not isinstance(facts, dict) or not isinstance(facts.get("accel"), str):
            raise InvalidInput(
                "a heartbeat says accel, cpus, memory_mib, memory_reserve_mib, cpu_overcommit"
            )
        checked: dict[str, Any] = {"accel": facts["accel"][:16]}
        for key, (low, high) in FACTS.items():
            value = facts.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidInput(f"heartbeat: {key} must be a whole number from {low} to {high}")
            checked[key] = value
        overcommit = facts.get("cpu_overcommit")
        if (
            isinstance(overcommit, bool)
            or not isinstance(overcommit, int | float)
            or not (0.1 <= overcommit <= 64)
        ):
            raise InvalidInput("heartbeat: cpu_overcommit must be a number from 0.1 to 64")
        checked["cpu_overcommit"] = float(overcommit)
        self.store.report(name, time.time(), **checked)
        return name
