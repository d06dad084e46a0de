"""A host agent joining the cluster and reporting to its control plane (issue 17, part 1).

Joining: ask the cluster port for its CA and check it against the token's fingerprint before
anything secret is sent (an address that answers is not yet the cluster), then send the token's
secret and a certificate request over TLS verified against that CA, and keep the certificate.
Its key never leaves the host. Reporting: a heartbeat over TLS with that certificate, the
control plane verified as the holder of the CA's ``control-plane`` certificate.

The agent's files are under ``GUREUM_HOME/agent/``: ``agent.key`` (0600), ``agent.pem``,
``ca.pem`` and ``cluster.json`` (the control plane's address, this host's name, its command
port's address, and the other control planes' addresses it was told of).

Several control planes may run (for availability). Each heartbeat's answer names the cluster
ports of those heard from lately; the agent keeps them and, when the one it reports to does not
answer, reports (heartbeats, events, image fetches) to the next that does. Whatever answers must
still prove itself a control plane of this cluster's CA, so a wrong address gets nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gureum.errors import GureumError, Unauthenticated, Unavailable
from gureum.host.interface import HostAgent
from gureum.model.cluster import ADDRESS, CONTROL_PLANE, JoinToken
from gureum.sys import jsonline
from gureum.sys.jsonline import tls_context
from gureum.sys.pki import csr_pem, fingerprint, new_key_pem


def ask(address: str, request: dict[str, Any], ctx: ssl.SSLContext) -> dict[str, Any]:
    """One request to the control plane's cluster port."""
    return jsonline.ask_blocking(address, request, ctx, CONTROL_PLANE)


def _verifying(ca_pem: str) -> ssl.SSLContext:
    return tls_context(False, ca_pem)


def join(token_text: str, folder: Path) -> str:
    """Join the cluster the token names; the host's name. The files are kept in ``folder``."""
    token = JoinToken.parse(token_text.strip())
    first = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    first.check_hostname = False
    first.verify_mode = ssl.CERT_NONE  # only to fetch the CA, checked below by its fingerprint
    ca_pem = str(ask(token.control_plane, {"op": "ca"}, first).get("ca", ""))
    try:
        seen = fingerprint(ca_pem.encode())
    except ValueError:
        seen = ""
    if seen != token.ca:
        raise Unauthenticated(
            f"the cluster port at {token.control_plane} has another CA than the token names: "
            "a wrong address, or something in between; nothing was sent"
        )
    key = new_key_pem()
    request = {"op": "join", "secret": token.secret, "csr": csr_pem(key, token.host).decode()}
    answer = ask(token.control_plane, request, _verifying(ca_pem))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / "agent.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    (folder / "agent.pem").write_text(str(answer["cert"]))
    (folder / "ca.pem").write_text(ca_pem)
    cluster = {
        "control_plane": token.control_plane,
        "host": answer["host"],
        "address": answer["address"],
    }
    (folder / "cluster.json").write_text(json.dumps(cluster))
    return str(answer["host"])


def joined(folder: Path) -> dict[str, Any] | None:
    """The control plane's address, this host's name and the address its command port listens
    on, if this agent has joined."""
    path = folder / "cluster.json"
    return dict(json.loads(path.read_text())) if path.exists() else None


T = TypeVar("T")
MAX_CONTROL_PLANES = 16  # addresses kept from a heartbeat's answer
ASK_TIMEOUT_S = 5.0  # a heartbeat to one control plane, before the next is tried


def control_planes(folder: Path) -> list[str]:
    """The control planes' cluster ports, in the order this agent tries them: the one that
    answered last first."""
    cluster = joined(folder)
    if cluster is None:
        raise GureumError(f"this agent has not joined a cluster ({folder} has no cluster.json)")
    others: list[str] = cluster.get("control_planes") or []
    return list(dict.fromkeys([cluster["control_plane"], *others]))


def _learn(folder: Path, answered: str, told: object) -> None:
    """After ``answered`` took a heartbeat: it is tried first from now on, with the control
    planes it named (each an address: they become places to connect to, nothing more)."""
    cluster = dict(joined(folder) or {})
    named = told if isinstance(told, list) else []
    others = [a for a in named if isinstance(a, str) and ADDRESS.fullmatch(a)]
    updated = {**cluster, "control_plane": answered,
               "control_planes": others[:MAX_CONTROL_PLANES]}  # fmt: skip
    if updated != cluster:
        part = folder / "cluster.json.part"
        part.write_text(json.dumps(updated))
        os.replace(part, folder / "cluster.json")


async def to_control_plane(folder: Path, call: Callable[[str], Awaitable[T]]) -> T:
    """``call`` with each control plane's address in turn until one answers. Whatever cannot
    be reached, or is not this cluster's control plane (another server took a dead one's
    address), passes the call on to the next, and so does a refusal (each control plane is
    asked in turn: one that still knows this host may take it); the first failure is raised
    when none answers."""
    first: Unavailable | Unauthenticated | None = None
    for address in control_planes(folder):
        try:
            return await call(address)
        except (Unavailable, Unauthenticated) as exc:
            first = first or exc
    assert first is not None
    raise first


def heartbeat(folder: Path, facts: dict[str, object]) -> dict[str, Any]:
    """Tell a control plane this host is alive and what it has; learn where the others are."""
    request = {"op": "heartbeat", "facts": facts}
    ctx = own_context(folder)

    async def send(address: str) -> tuple[str, dict[str, Any]]:
        # Short: a control plane whose machine is off (its packets dropped) must not hold up
        # trying the next past the time after which this host counts as unreachable.
        return address, await jsonline.ask(address, request, ctx, CONTROL_PLANE, ASK_TIMEOUT_S)

    answered, answer = asyncio.run(to_control_plane(folder, send))
    _learn(folder, answered, answer.get("control_planes"))
    return answer


def own_context(folder: Path, *, server: bool = False) -> ssl.SSLContext:
    """TLS with this agent's certificate, checking the peer against the cluster's CA."""
    ca = (folder / "ca.pem").read_text()
    return tls_context(server, ca, str(folder / "agent.pem"), str(folder / "agent.key"))


def facts(host: HostAgent) -> dict[str, object]:
    """What a host reports of itself: its accelerator and capacity."""
    cap = host.capacity()
    return {"accel": host.accel.accel, "cpus": cap.cpus, "memory_mib": cap.memory_mib,
            "memory_reserve_mib": cap.memory_reserve_mib,
            "cpu_overcommit": cap.cpu_overcommit}  # fmt: skip
