"""The control plane's cluster port: where host agents join and report (issue 17, part 1).

TLS with the control plane's certificate from the cluster CA; a client certificate is asked
for, and when one is given TLS checks it against that CA. One request per connection, one JSON
line each way:

- ``{"op": "ca"}``: the CA certificate, which an agent checks against its join token's
  fingerprint before it sends anything secret;
- ``{"op": "join", "secret", "csr"}``: a join token's secret and a certificate request: the
  agent's certificate (``service/enrolment.py``);
- ``{"op": "heartbeat", "facts"}``: with the agent's certificate only: what its host has;
  answered with the cluster ports of the control planes heard from lately, where the agent
  reports next should this one go;
- ``{"op": "image-file", "image", "version", "role"}``: with the agent's certificate only: one
  file of a catalog image's current version, as a header ``{file, bytes, sha256}`` and then the
  file (the agent checks both before it keeps it, ``host/image_pull.py``). A project's own
  image is not served (it goes where its project's instances go, which is not yet);
- ``{"op": "event", "instance", "event", "pid", ...}``: with the agent's certificate only: an
  engine event of a VM on that host (``host/event_report.py``): ``boot`` (``name``, ``at``),
  ``paused`` (``reason``), ``resumed``, ``exit`` (``how``, ``detail``), with the pid of the QEMU
  it came from once known. Taken only for an instance the store places on that very host, and
  not from a QEMU other than the one the store records (an earlier run's late exit);
- ``{"op": "metadata", "network", "ip", "mac"}``: with the agent's certificate only: who asks
  that host's metadata service from ``ip`` on ``network``, ``mac`` being what the address
  resolves to in the network's namespace there (``host/metadata_ask.py``). Answered with the
  VM's metadata (``caller``) only for a VM the store places on that very host whose NIC has
  that address and MAC, else ``caller: null``.

The wire (one request per connection, bounded in size, time and connections) is
``sys/jsonline.py``'s, as on each agent's command port.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from collections.abc import Callable
from typing import Any

from gureum.errors import Conflict, InvalidInput, NotFound
from gureum.host import remote_calls
from gureum.host.remote_calls import REMOTE_ROOT
from gureum.ids import looks_like_id
from gureum.model.cluster import CONTROL_PLANE
from gureum.model.hardware import MAC
from gureum.model.instance import BOOT_EVENTS
from gureum.network.metadata import Caller
from gureum.service.cluster_ca import ClusterCA
from gureum.service.enrolment import EnrolmentService
from gureum.service.images import ImageService
from gureum.sys.jsonline import LineServer, Streamed, tls_context


def server_context(ca: ClusterCA) -> ssl.SSLContext:
    """Its own certificate; a client's checked against the CA when given (a joining agent has
    none yet)."""
    cert, key = ca.control_plane_files
    return tls_context(True, ca.pem.decode(), str(cert), str(key))


EVENT_TEXT_MAX = 2000  # an exit's detail or a pause's reason, as the agent's QEMU told it
EXITS = ("stopped", "crashed")

# (host, instance id, event, its fields): the service's taker of a joined host's VM events
# (``Lifecycle.host_event``).
EventTaker = Callable[[str, str, str, dict[str, Any]], None]
# (host, network id, ip, MAC seen there): the VM asking that host's metadata service
# (``NetworkService.caller_on``).
CallerFinder = Callable[[str, str, str, str], Caller | None]


def metadata_fields(request: dict[str, Any]) -> tuple[str, str, str]:
    """A metadata question, checked: (network id, ip, MAC)."""
    network, ip, mac = request.get("network"), request.get("ip"), request.get("mac")
    if not isinstance(network, str) or not looks_like_id(network, "n-"):
        raise InvalidInput("metadata names a network id")
    try:
        address = ipaddress.IPv4Address(ip if isinstance(ip, str) else "")
    except ValueError:
        raise InvalidInput("metadata names an IPv4 address") from None
    if not isinstance(mac, str) or not MAC.fullmatch(mac.lower()):
        raise InvalidInput("metadata names a MAC address")
    return network, str(address), mac.lower()


def event_fields(request: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """An agent's event, checked field by field: (instance id, event, its fields)."""
    instance_id, event = request.get("instance"), request.get("event")
    if not isinstance(instance_id, str) or not looks_like_id(instance_id, "i-"):
        raise InvalidInput("an event names an instance id")

    def text(key: str) -> str:
        value = request.get(key)
        if not isinstance(value, str) or len(value) > EVENT_TEXT_MAX:
            raise InvalidInput(f"a {event} event's {key} is text of at most {EVENT_TEXT_MAX}")
        return value

    pid = request.get("pid")
    if pid is not None and (type(pid) is not int or not 1 < pid < 1 << 32):
        raise InvalidInput("an event's pid is a process id")
    run = {"pid": pid}
    if event == "boot":
        name, at = request.get("name"), request.get("at")
        if name not in BOOT_EVENTS:
            raise InvalidInput("a boot event names one of the boot phases")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise InvalidInput("a boot event's at is a time")
        return instance_id, event, {**run, "name": name, "at": float(at)}
    if event == "paused":
        return instance_id, event, {**run, "reason": text("reason")}
    if event == "resumed":
        return instance_id, event, run
    if event == "exit":
        if request.get("how") not in EXITS:
            raise InvalidInput(f"an exit is {' or '.join(EXITS)}")
        return instance_id, event, {**run, "how": request["how"], "detail": text("detail")}
    raise InvalidInput(f"no event {str(event)[:40]!r}")


class ClusterPort:
    def __init__(
        self,
        ca: ClusterCA,
        enrolment: EnrolmentService,
        images: ImageService,
        events: EventTaker | None = None,
        callers: CallerFinder | None = None,
    ) -> None:
        self.ca, self.enrolment, self.images, self.events = ca, enrolment, images, events
        self.callers = callers
        self.server: LineServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (``port`` 0: one the system chose)."""
        self.ca.ensure()
        self.server = LineServer(self._answer, server_context(self.ca))
        return await self.server.start(host, port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    async def _answer(
        self, request: dict[str, Any], tls: ssl.SSLObject | None
    ) -> dict[str, Any] | Streamed:
        op = request.get("op")
        if op == "ca":
            return {"ca": self.ca.pem.decode(), "name": CONTROL_PLANE}
        if op == "join":
            return self.enrolment.join(request.get("secret"), request.get("csr"))
        if op == "heartbeat":
            peer = tls.getpeercert(binary_form=True) if tls is not None else None
            host = self.enrolment.heartbeat(peer, request.get("facts"))
            # Where else it may report: should this control plane go, another takes over.
            return {"ok": True, "host": host, "control_planes": self.enrolment.control_planes()}
        if op == "image-file":
            self.enrolment.enrolled_host(tls.getpeercert(binary_form=True) if tls else None)
            return self._image_file(request)
        if op == "event" and self.events is not None:
            host = self.enrolment.enrolled_host(tls.getpeercert(binary_form=True) if tls else None)
            self.events(host, *event_fields(request))
            return {"ok": True}
        if op == "metadata" and self.callers is not None:
            host = self.enrolment.enrolled_host(tls.getpeercert(binary_form=True) if tls else None)
            caller = self.callers(host, *metadata_fields(request))
            # The typed wire of HostAgent calls (a Caller holds no paths: the root is unused).
            return {"caller": remote_calls.encode(caller, Caller | None, REMOTE_ROOT)}
        raise ValueError(f"no operation {str(op)[:40]!r}")

    def _image_file(self, request: dict[str, Any]) -> Streamed:
        name, version, role = request.get("image"), request.get("version"), request.get("role")
        if not all(isinstance(x, str) for x in (name, version, role)):
            raise InvalidInput("image-file takes image, version and role")
        image = self.images.get(str(name), ())  # the catalog's alone: () is no project
        if image.version != version or role not in image.files:
            raise NotFound(f"image {name} has no {str(role)[:20]} of version {str(version)[:64]}")
        entry = image.files[str(role)]
        path = image.file(str(role))
        if path.stat().st_size != entry["bytes"]:
            raise Conflict(f"image {name} {version}: its {role} is not the size recorded")
        header = {"file": entry["file"], "bytes": entry["bytes"], "sha256": entry["sha256"]}
        return Streamed(header, path)
