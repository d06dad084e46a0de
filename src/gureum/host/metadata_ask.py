"""Who is asking a joined host's metadata service: the control plane knows, the host checks.

On one machine the service answers 169.254.169.254 from its own store. On a joined host the
agent serves it in each network's namespace there (``host/network.py``, as on the control
plane's host), and for each connection asks the control plane's cluster port who owns its
source address, sending the MAC that address resolves to in that namespace (the firewall's
anti-spoofing ties address, MAC and TAP together). The control plane answers only for a VM it
places on this very host (``NetworkService.caller_on``): a compromised host can read its own
VMs' metadata, which it holds anyway, and nothing of another host's.

The metadata server keeps each answer a second (``LOOKUP_TTL_S``) and bounds what a guest
may ask, so a guest that asks in a loop costs the control plane one question a second.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from gureum.errors import GureumError
from gureum.host import enrolment
from gureum.model.cluster import CONTROL_PLANE
from gureum.network.metadata import Caller
from gureum.sys import jsonline

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0  # to one control plane, before the next is tried

# (network id, ip) -> the MAC it resolves to in that network's namespace here, or None: the
# host's ``neighbour_mac``.
Neighbour = Callable[[str, str], Awaitable[str | None]]


class MetadataAsk:
    """The ``Lookup`` of a joined host's metadata servers."""

    def __init__(self, folder: Path, neighbour: Neighbour) -> None:
        self.folder, self.neighbour = folder, neighbour
        self._tls: ssl.SSLContext | None = None

    async def __call__(self, network_id: str, ip: str) -> Caller | None:
        mac = await self.neighbour(network_id, ip)
        if mac is None:  # nothing at that address here: nobody to answer
            return None
        try:
            return await self._ask(network_id, ip, mac.lower())
        except GureumError as exc:  # no control plane answered: this request goes unanswered
            log.warning("metadata for %s on %s: the control plane did not say: %s",
                        ip, network_id, exc.message)  # fmt: skip
            return None

    async def _ask(self, network_id: str, ip: str, mac: str) -> Caller | None:
        if self._tls is None:  # made once: the agent's files do not change while it runs
            self._tls = enrolment.own_context(self.folder)
        request = {"op": "metadata", "network": network_id, "ip": ip, "mac": mac}
        send = partial(jsonline.ask, request=request, ctx=self._tls, server_name=CONTROL_PLANE,
                       timeout=ASK_TIMEOUT_S)  # fmt: skip
        answer = await enrolment.to_control_plane(self.folder, send)
        return caller_of(answer.get("caller"), network_id, ip, mac)


def caller_of(found: object, network_id: str, ip: str, mac: str) -> Caller | None:
    """The control plane's answer, checked: it is about the address and MAC asked for."""
    if found is None:
        return None
    if not isinstance(found, dict):
        raise GureumError(f"the control plane's answer for {ip} on {network_id} is not a VM")
    keys = found.get("public_keys")
    user_data = found.get("user_data")
    fields = (found.get("instance_id"), found.get("hostname"), found.get("ip"), found.get("mac"))
    if (
        not all(isinstance(f, str) for f in fields)
        or not isinstance(keys, list)
        or not all(isinstance(k, str) for k in keys)
        or not (user_data is None or isinstance(user_data, str))
        or found["ip"] != ip
        or str(found["mac"]).lower() != mac
    ):
        raise GureumError(f"the control plane's answer for {ip} on {network_id} is not a VM")
    return Caller(found["instance_id"], found["hostname"], ip, found["mac"], tuple(keys),
                  user_data)  # fmt: skip
