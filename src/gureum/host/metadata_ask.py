"""Who is asking a joined host's metadata service: the control plane knows, the host checks.

On one machine the service answers 169.254.169.254 from its own store. On a joined host the
agent serves it in each network's namespace there (``host/network.py``, as on the control
plane's host), and for each connection asks the control plane's cluster port who owns its
source address, sending the MAC that address resolves to in that namespace (the firewall's
anti-spoofing ties address, MAC and TAP together). The control plane answers only for a VM it
places on this very host (``NetworkService.caller_on``): a compromised host can read its own
VMs' metadata, which it holds anyway, and nothing of another host's.

The metadata server keeps each answer a second (``LOOKUP_TTL_S``), asks once for all of a
guest's connections waiting on one address, and bounds what a guest may ask; this host asks
at most ``ASKS_AT_ONCE`` questions at a time, all its guests together, so that its heartbeats
and event reports always find a connection free at the cluster port. A question the control
plane does not answer is answered 503 (the guest asks again), not remembered as nobody.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from gureum.errors import GureumError, InvalidInput, Unavailable
from gureum.host import enrolment, remote_calls
from gureum.host.remote_calls import REMOTE_ROOT
from gureum.model.cluster import CONTROL_PLANE
from gureum.network.metadata import Caller
from gureum.sys import jsonline

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0  # to one control plane, before the next is tried
ASKS_AT_ONCE = jsonline.MAX_PER_ADDRESS // 2  # of the cluster port's connections per address
ASK_WAIT_S = 15.0  # a question waiting for its turn and its answer, at most

# (network id, ip) -> the MAC it resolves to in that network's namespace here, or None: the
# host's ``neighbour_mac``.
Neighbour = Callable[[str, str], Awaitable[str | None]]


class MetadataAsk:
    """The ``Lookup`` of a joined host's metadata servers."""

    def __init__(self, folder: Path, neighbour: Neighbour) -> None:
        self.folder, self.neighbour = folder, neighbour
        self._tls: ssl.SSLContext | None = None
        # Questions at once, for every guest of this host together: fewer than the cluster
        # port's connections per address, which heartbeats, events and image fetches share.
        self._asking = asyncio.Semaphore(ASKS_AT_ONCE)

    async def __call__(self, network_id: str, ip: str) -> Caller | None:
        mac = await self.neighbour(network_id, ip)
        if mac is None:  # nothing at that address here: nobody to answer
            return None
        try:
            async with asyncio.timeout(ASK_WAIT_S):
                async with self._asking:
                    return await self._ask(network_id, ip, mac.lower())
        except (GureumError, TimeoutError) as exc:
            said = exc.message if isinstance(exc, GureumError) else "too many questions waiting"
            log.warning("metadata for %s on %s: the control plane did not say: %s",
                        ip, network_id, said)  # fmt: skip
            # Not "nobody": the guest is answered 503 and asks again.
            raise Unavailable(f"the control plane did not say who {ip} is") from None

    async def _ask(self, network_id: str, ip: str, mac: str) -> Caller | None:
        if self._tls is None:  # made once: the agent's files do not change while it runs
            self._tls = enrolment.own_context(self.folder)
        request = {"op": "metadata", "network": network_id, "ip": ip, "mac": mac}
        send = partial(jsonline.ask, request=request, ctx=self._tls, server_name=CONTROL_PLANE,
                       timeout=ASK_TIMEOUT_S)  # fmt: skip
        answer = await enrolment.to_control_plane(self.folder, send)
        return caller_of(answer.get("caller"), network_id, ip, mac)


def caller_of(found: object, network_id: str, ip: str, mac: str) -> Caller | None:
    """The control plane's answer, checked: a ``Caller`` on the typed wire of HostAgent calls
    (``remote_calls.decode``), about the address and MAC asked for."""
    wrong = GureumError(f"the control plane's answer for {ip} on {network_id} is not a VM")
    try:
        caller: Caller | None = remote_calls.decode(found, Caller | None, REMOTE_ROOT, "caller")
    except InvalidInput:
        raise wrong from None
    if caller is not None and (caller.ip != ip or caller.mac.lower() != mac):
        raise wrong
    return caller
