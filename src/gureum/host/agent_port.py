"""A host agent's command port: where the control plane asks this host (issue 17, part 1).

It listens on the address the host was enrolled with, over TLS 1.3 with the agent's own
certificate, and answers only a client whose certificate the cluster CA issued to the control
plane (``control-plane``): another host's certificate, one from any other CA, or none at all is
refused before a request is read. The wire is ``sys/jsonline.py``'s.

What it answers so far:

- ``{"op": "facts"}``: the host's name, accelerator and capacity (what its heartbeat says);
- ``{"op": "running", "ids": [...]}``: which of those instances have a process on this host
  (``running``: ``{id: pid or null}``), which of them this agent watches (``watched``: it
  started or adopted them, and has not seen them end), and which of those with no process
  ended with their guest powering off (``clean``): for the control plane to compare with what
  it recorded (``Lifecycle.converge``);
- ``{"op": "image", "name", "version", "files"}``: make sure this host holds that version of
  a catalog image, fetching what it lacks from the control plane (``host/image_pull.py``);
- ``{"op": "call", "method", "args"}``: one of the ``HostAgent`` methods that travel
  (``host/remote_calls.py``), run on this host with its paths under this agent's home:
  ``{"result": ...}``;
- ``{"op": "network", "net", "plan"}``: make the network exist on this host and bring its DHCP,
  DNS, firewall and VXLAN port in step with the plan (``ensure_network`` then
  ``sync_network``, in one round trip);
- ``{"op": "start", "spec"}``: start a VM (a cold boot) from its ``VMSpec``: ``{"pid": ...}``.
  Its engine events go back to the control plane as they happen (``host/event_report.py``);
- ``{"op": "adopt", "spec", "pid", "booted"}``: watch again a VM whose QEMU outlived an earlier
  run of this agent (its monitor and events taken up again): ``{"top": its disk's file}``, or
  ``{"top": null}`` for one this agent watches already (two control planes may both ask).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from gureum.config import Config
from gureum.errors import InvalidInput, NotFound, Unauthenticated
from gureum.host import enrolment, image_pull, remote_calls
from gureum.host.event_report import EventReport
from gureum.host.interface import HostAgent, NetworkPlan, VMSpec
from gureum.host.metadata_ask import MetadataAsk
from gureum.ids import check_name, looks_like_id
from gureum.model.cluster import CONTROL_PLANE
from gureum.model.instance import DEFAULT_PROJECT
from gureum.model.network import Network
from gureum.sys.jsonline import KEEP_ALIVE_S, LineServer
from gureum.sys.pki import issued_name

MAX_IDS = 10_000
MIN_VM_UID = 1000  # a VM's own user is never a system account (the store hands out far above)


class AgentPort:
    def __init__(self, config: Config, host: HostAgent) -> None:
        folder = config.agent_dir
        self.folder, self.host, self.home = folder, host, config.home
        self.images_dir = config.images_dir
        self.ca = (folder / "ca.pem").read_bytes()
        cluster = enrolment.joined(folder)
        if cluster is None:
            raise InvalidInput(f"this agent has not joined a cluster ({folder}/cluster.json)")
        self.name, self.address = cluster["host"], cluster.get("address")
        ctx = enrolment.own_context(folder, server=True)
        ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate, no connection
        # Connections kept for the next command: only the control plane holds one.
        self.server = LineServer(
            self._answer, ctx, peer=self._control_plane_only, keep_alive=KEEP_ALIVE_S
        )
        self.events = EventReport(folder, ended=self._ended)
        # The metadata service in its networks' namespaces, answering from the control plane.
        host.serve_metadata(MetadataAsk(folder, host.neighbour_mac))
        # The VMs this agent started or adopted and has not seen end: what it answers for.
        self.watched: set[str] = set()
        self._adopting = asyncio.Lock()

    async def start(self, listen: str | None = None) -> int:
        """Listen on the enrolled address (or ``listen``, HOST:PORT); the port."""
        where = listen or self.address
        if where is None:  # joined before agents had a command port
            raise InvalidInput(
                "this agent's cluster.json has no command port address: "
                "pass --listen HOST:PORT (the address it was enrolled with)"
            )
        host, _, port = where.rpartition(":")
        return await self.server.start(host.strip("[]"), int(port))

    def _control_plane_only(self, tls: ssl.SSLObject | None) -> None:
        """Right after the handshake, before anything is read: another host's certificate
        holds no slot."""
        peer = tls.getpeercert(binary_form=True) if tls is not None else None
        if peer is None or issued_name(self.ca, peer) != CONTROL_PLANE:
            raise Unauthenticated("this agent takes commands from its control plane only")

    async def stop(self) -> None:
        await self.server.stop()
        await self.events.close()

    def _vm_spec(self, request: dict[str, Any]) -> VMSpec:
        spec: VMSpec = remote_calls.decode(request.get("spec"), VMSpec, self.home, "spec")
        if spec.kind != "vm":
            raise InvalidInput("a joined host runs VMs only, not containers, yet")
        if (
            not looks_like_id(spec.instance_id, "i-")  # names its folders
            or not (spec.project_id == DEFAULT_PROJECT or looks_like_id(spec.project_id, "p-"))
            or spec.uid is None
            or spec.uid < MIN_VM_UID
        ):
            raise InvalidInput("a VM needs instance and project ids and an unprivileged uid")
        check_name(spec.name, what="instance name")
        return spec

    def _ended(self, instance_id: str) -> None:
        self.watched.discard(instance_id)

    async def _answer(self, request: dict[str, Any], tls: ssl.SSLObject | None) -> dict[str, Any]:
        self._control_plane_only(tls)  # checked at the handshake too; what the answer rests on
        op = request.get("op")
        if op == "facts":
            return {"host": self.name, **enrolment.facts(self.host)}
        if op == "running":
            ids = request.get("ids")
            if (
                not isinstance(ids, list)
                or len(ids) > MAX_IDS
                or not all(isinstance(i, str) and looks_like_id(i, "i-") for i in ids)
            ):
                raise InvalidInput(f"running takes ids: a list of at most {MAX_IDS} instance ids")
            running = {i: self.host.find_running(i) for i in ids}
            return {
                "running": running,
                "watched": sorted(self.watched.intersection(ids)),
                "clean": sorted(i for i, pid in running.items()
                                if pid is None and self.host.died_cleanly(i)),
            }  # fmt: skip
        if op == "image":
            return await image_pull.pull(
                self.folder, self.images_dir, request.get("name"), request.get("version"),
                request.get("files"),
            )  # fmt: skip
        if op == "call":
            method, kwargs = remote_calls.decode_call(request, self.home)
            result = await getattr(self.host, method)(**kwargs)
            returns = remote_calls.hints(method)["return"]
            return {"result": remote_calls.encode(result, returns, self.home)}
        if op == "network":
            net = remote_calls.decode(request.get("net"), Network, self.home, "network.net")
            plan = remote_calls.decode(request.get("plan"), NetworkPlan, self.home, "network.plan")
            await self.host.ensure_network(net)
            await self.host.sync_network(net, plan)
            return {"ok": True}
        if op == "start":
            spec = self._vm_spec(request)
            events = self.events.for_instance(spec.instance_id)
            started = await self.host.start(spec, events)
            events.pid = started
            self.watched.add(spec.instance_id)
            return {"pid": started}
        if op == "adopt":
            spec = self._vm_spec(request)
            pid, booted = request.get("pid"), request.get("booted")
            if type(pid) is not int or pid <= 1 or not isinstance(booted, bool):
                raise InvalidInput("adopt takes a pid and whether it had booted")
            async with self._adopting:  # one at a time: a QEMU's monitor takes one client
                if spec.instance_id in self.watched:
                    return {"top": None}
                if self.host.find_running(spec.instance_id) != pid:
                    raise NotFound(f"no QEMU of {spec.instance_id} runs as pid {pid} here")
                events = self.events.for_instance(spec.instance_id)
                events.pid = pid
                top = await self.host.adopt(spec, pid, events, booted=booted)
                self.watched.add(spec.instance_id)
            return {"top": remote_calls.encode(top, Path, self.home)}
        raise InvalidInput(f"no operation {str(op)[:40]!r}")
