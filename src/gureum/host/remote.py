"""A joined host's ``HostAgent`` as the control plane holds it: each call goes to the host's agent
on its command port (``host/agent_port.py``) and comes back as the agent's own host answered it.

Arguments and results travel as ``host/remote_calls.py`` encodes them (the interface's own type
hints); an error the agent's host raised is raised here as the same class (``errors.from_code``),
so the service handles a remote ``InvalidState`` as a local one. Paths are this side's stand-ins
under ``REMOTE_ROOT/<host>`` (``path``), made the agent's own paths under its home there: which
host a path is on is read from the path itself (``host_of``).

Each method of ``REMOTE_METHODS`` is called as the interface names it (``wait_ready(id, 300)``),
its arguments bound by the interface's own signature. ``start`` runs a VM there; its engine
events come back to the control plane's cluster port as the agent reports them
(``host/event_report.py``), not through this object. What does not travel yet (memory images,
consoles, streams, hot-plugging) is not here, and the service's ``HostRouter`` says so.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gureum.engine.qemu.accel import AccelChoice
from gureum.errors import (
    Conflict,
    EngineError,
    GureumError,
    InsufficientCapacity,
    InvalidInput,
    InvalidState,
    NotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
    Untrusted,
)
from gureum.host.interface import NetworkPlan, VMEvents, VMSpec
from gureum.host.remote_calls import (
    REMOTE_METHODS,
    REMOTE_ROOT,
    decode,
    encode,
    encode_call,
    hints,
    signature,
)
from gureum.model.network import Network
from gureum.sys import jsonline

# What an agent's refusal may be raised as on the control plane (InvalidState is a Conflict,
# CommandNotFound, VMOnly and InvalidImage are InvalidInput): its host's own answers.
AGENT_ERRORS = (Conflict, EngineError, InsufficientCapacity, InvalidInput, NotFound, Timeout,
                Unavailable)  # fmt: skip
IMAGE_PULL_TIMEOUT_S = 3600.0  # a Debian image over a slow link; each chunk has its own deadline
# A call that itself waits (``wait_ready(id, 300)``, ``stop(id, 60)``) is given that long and
# this much more for the wire.
WIRE_SLACK_S = 30.0


def host_of(path: Path) -> str | None:
    """The joined host a path names (``REMOTE_ROOT/<host>/...``); None: this host's own."""
    try:
        rel = path.relative_to(REMOTE_ROOT)
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else None


@dataclass(frozen=True)
class Running:
    """A joined host's answer about some of its instances."""

    pids: dict[str, int | None]  # each one's QEMU's pid there, or None
    watched: set[str]  # those its agent watches (started or adopted, not seen to end)
    clean: set[str]  # of those with no QEMU, the ones whose guest powered off


class RemoteHostAgent:
    def __init__(
        self,
        name: str,
        address: str,
        context: Callable[[], ssl.SSLContext],
        accel: str = "tcg",
        pool: jsonline.Pool | None = None,
    ) -> None:
        """``pool``: the control plane's idle connections to agents, reused across calls."""
        self.name, self.address, self._context, self.pool = name, address, context, pool
        self.root = REMOTE_ROOT / name
        # What its heartbeat said its QEMU runs with, as the control plane records instances.
        self.accel = AccelChoice(accel, f"reported by host {name}")

    def path(self, relative: str) -> Path:
        """A file the store recorded (relative to a home), as it is named on this side."""
        return self.root / relative

    async def ask(
        self, request: dict[str, Any], timeout: float = jsonline.CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        """One request to the host's agent; its answer (Untrusted when what answers is not that
        host's agent, or it says this side's certificate is not the control plane's;
        Unavailable when it cannot be reached, does not answer in time, or drops the connection,
        as TLS does when the agent's CA does not know this side's certificate)."""
        try:
            return await jsonline.ask(
                self.address, request, self._context(), self.name, timeout, self.pool
            )
        except Unauthenticated as exc:  # either end refused the other's certificate: not 401
            raise Untrusted(f"host {self.name}: {exc.message}") from None
        except GureumError as exc:
            if isinstance(exc, AGENT_ERRORS):
                raise
            # Nothing else is an agent's to say: not 403, not a quota, not the caller's token.
            raise Unavailable(f"host {self.name} answered {exc.code}: {exc.message}") from None

    def _result(self, answer: dict[str, Any], key: str, hint: Any, what: str) -> Any:
        try:
            return decode(answer.get(key), hint, self.root, what)
        except (InvalidInput, ValueError, TypeError) as exc:  # the agent's fault, not the caller's
            said = exc.message if isinstance(exc, GureumError) else str(exc)
            raise Unavailable(f"host {self.name} gave a malformed answer: {said}") from None

    async def call(self, method: str, **kwargs: Any) -> Any:
        """``method`` of the host's agent with these arguments; its result."""
        waits = kwargs.get("timeout")
        deadline = jsonline.CALL_TIMEOUT_S
        if isinstance(waits, int | float):
            deadline = max(deadline, float(waits) + WIRE_SLACK_S)
        answer = await self.ask(encode_call(method, kwargs, self.root), timeout=deadline)
        return self._result(answer, "result", hints(method)["return"], method)

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        """A method of ``REMOTE_METHODS``, called as the interface names it."""
        if method not in REMOTE_METHODS:
            raise AttributeError(method)
        bind = signature(method).bind

        async def remote(*args: Any, **kwargs: Any) -> Any:
            bound = bind(None, *args, **kwargs).arguments
            bound.pop("self")
            return await self.call(method, **bound)

        return remote

    # -- images ----------------------------------------------------------------------------------
    async def ensure_image(
        self, name: str, version: str, files: dict[str, dict[str, object]]
    ) -> dict[str, Any]:
        """The host holds this version of a catalog image: its agent fetches what it lacks from
        the control plane, each file checked against ``files`` (what the catalog recorded)."""
        request = {"op": "image", "name": name, "version": version, "files": files}
        return await self.ask(request, timeout=IMAGE_PULL_TIMEOUT_S)

    # -- networks --------------------------------------------------------------------------------
    async def bring_network(self, net: Network, plan: NetworkPlan) -> None:
        """The network made there if need be and brought in step with ``plan``: one round trip
        for ``ensure_network`` and ``sync_network``."""
        await self.ask({"op": "network", "net": encode(net, Network, self.root),
                        "plan": encode(plan, NetworkPlan, self.root)})  # fmt: skip

    # -- instances -------------------------------------------------------------------------------
    async def start(
        self,
        spec: VMSpec,
        events: VMEvents,
        restore_from: str | None = None,
        keep_memory: bool = False,
    ) -> int:
        """Start the VM's QEMU there (a cold boot); its pid on that host. ``events`` are not
        passed: the agent reports them to the cluster port, where the service takes them."""
        if restore_from is not None:
            raise InvalidState(
                f"{spec.name} is on joined host {self.name}, where resuming a memory image "
                "is not supported yet"
            )
        answer = await self.ask({"op": "start", "spec": encode(spec, VMSpec, self.root)})
        pid: int = self._result(answer, "pid", int, "start")
        return pid

    async def adopt(self, spec: VMSpec, pid: int, events: VMEvents, *, booted: bool) -> Path | None:
        """Have the agent watch again a VM whose QEMU outlived its last run; the file its disk
        writes to, or None when the agent watches it already. ``events``: as for ``start``."""
        request = {"op": "adopt", "spec": encode(spec, VMSpec, self.root), "pid": pid,
                   "booted": booted}  # fmt: skip
        top: Path | None = self._result(await self.ask(request), "top", Path | None, "adopt")
        return top

    async def running(self, ids: list[str]) -> Running:
        """What runs there of these instances, as the agent sees it."""
        answer = await self.ask({"op": "running", "ids": ids})
        running = self._result(answer, "running", dict[str, int | None], "running")
        watched = self._result(answer, "watched", list[str], "running")
        clean = self._result(answer, "clean", list[str], "running")
        return Running(running, set(watched), set(clean))

    async def claim_waiting(self, spec: VMSpec, events: VMEvents) -> None:
        """Nothing: QEMUs wait in the pool on the control plane's own host only."""

    async def discard_waiting(self, instance_id: str) -> None:
        """Nothing: see ``claim_waiting``."""

    def forget(self, instance_id: str) -> None:
        """Nothing to drop here: the agent forgets its own VMs as they end."""

    def rss_bytes(self, instance_id: str) -> int | None:
        """None: not measured from here (a joined host's figures do not travel yet)."""
        return None

    def own_boot_files(self, instance_id: str) -> Path | None:
        """None: a machine imported from a backup (with boot files of its own) stays on the
        control plane's host."""
        return None
