"""A joined host's ``HostAgent`` as the control plane holds it: each call goes to the host's agent
on its command port (``host/agent_port.py``) and comes back as the agent's own host answered it.

Arguments and results travel as ``host/remote_calls.py`` encodes them (the interface's own type
hints); an error the agent's host raised is raised here as the same class (``errors.from_code``),
so the service handles a remote ``InvalidState`` as a local one. Paths are this side's stand-ins
under ``REMOTE_ROOT`` (``path``), made the agent's own paths under its home there.

Not every method travels yet (``REMOTE_METHODS``): the rest of the interface (starting
instances, with their events coming back, consoles, streams) is the next step of issue 17.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gureum.engine.qemu.agent import ExecResult
from gureum.errors import (
    Conflict,
    EngineError,
    GureumError,
    InsufficientCapacity,
    InvalidInput,
    NotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
    Untrusted,
)
from gureum.host.remote_calls import REMOTE_ROOT, decode, encode_call, hints
from gureum.host.stats import InstanceStats
from gureum.model.hardware import Hardware
from gureum.model.network import Network
from gureum.sys import jsonline

# What an agent's refusal may be raised as on the control plane (InvalidState is a Conflict,
# CommandNotFound, VMOnly and InvalidImage are InvalidInput): its host's own answers.
AGENT_ERRORS = (Conflict, EngineError, InsufficientCapacity, InvalidInput, NotFound, Timeout,
                Unavailable)  # fmt: skip
IMAGE_PULL_TIMEOUT_S = 3600.0  # a Debian image over a slow link; each chunk has its own deadline


class RemoteHostAgent:
    def __init__(self, name: str, address: str, context: Callable[[], ssl.SSLContext]) -> None:
        self.name, self.address, self._context = name, address, context

    def path(self, relative: str) -> Path:
        """A file the store recorded (relative to a home), as it is named on this side."""
        return REMOTE_ROOT / relative

    async def ask(
        self, request: dict[str, Any], timeout: float = jsonline.CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        """One request to the host's agent; its answer (Untrusted when what answers is not that
        host's agent, or it says this side's certificate is not the control plane's;
        Unavailable when it cannot be reached, does not answer in time, or drops the connection,
        as TLS does when the agent's CA does not know this side's certificate)."""
        try:
            return await jsonline.ask(self.address, request, self._context(), self.name, timeout)
        except Unauthenticated as exc:  # either end refused the other's certificate: not 401
            raise Untrusted(f"host {self.name}: {exc.message}") from None
        except GureumError as exc:
            if isinstance(exc, AGENT_ERRORS):
                raise
            # Nothing else is an agent's to say: not 403, not a quota, not the caller's token.
            raise Unavailable(f"host {self.name} answered {exc.code}: {exc.message}") from None

    async def call(self, method: str, **kwargs: Any) -> Any:
        """``method`` of the host's agent with these arguments; its result."""
        answer = await self.ask(encode_call(method, kwargs, REMOTE_ROOT))
        try:
            return decode(answer.get("result"), hints(method)["return"], REMOTE_ROOT, method)
        except (InvalidInput, ValueError, TypeError) as exc:  # the agent's fault, not the caller's
            said = exc.message if isinstance(exc, GureumError) else str(exc)
            raise Unavailable(f"host {self.name} gave a malformed answer: {said}") from None

    # -- images ----------------------------------------------------------------------------------
    async def ensure_image(
        self, name: str, version: str, files: dict[str, dict[str, object]]
    ) -> dict[str, Any]:
        """The host holds this version of a catalog image: its agent fetches what it lacks from
        the control plane, each file checked against ``files`` (what the catalog recorded)."""
        request = {"op": "image", "name": name, "version": version, "files": files}
        return await self.ask(request, timeout=IMAGE_PULL_TIMEOUT_S)

    # -- disks -----------------------------------------------------------------------------------
    async def create_disk(self, path: Path, backing: Path, size_bytes: int) -> None:
        await self.call("create_disk", path=path, backing=backing, size_bytes=size_bytes)

    async def remove_file(self, path: Path) -> None:
        await self.call("remove_file", path=path)

    # -- networks --------------------------------------------------------------------------------
    async def ensure_network(self, net: Network) -> None:
        await self.call("ensure_network", net=net)

    async def remove_network(self, network_id: str) -> None:
        await self.call("remove_network", network_id=network_id)

    async def neighbour_mac(self, network_id: str, ip: str) -> str | None:
        found: str | None = await self.call("neighbour_mac", network_id=network_id, ip=ip)
        return found

    # -- instances -------------------------------------------------------------------------------
    async def stop(self, instance_id: str, timeout: float) -> str:
        how: str = await self.call("stop", instance_id=instance_id, timeout=timeout)
        return how

    async def kill(self, instance_id: str) -> None:
        await self.call("kill", instance_id=instance_id)

    async def destroy(self, instance_id: str) -> None:
        await self.call("destroy", instance_id=instance_id)

    async def exec(
        self, instance_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        result: ExecResult = await self.call(
            "exec", instance_id=instance_id, argv=argv, stdin=stdin, timeout=timeout
        )
        return result

    async def console_log(self, instance_id: str, tail_bytes: int) -> bytes:
        log: bytes = await self.call("console_log", instance_id=instance_id, tail_bytes=tail_bytes)
        return log

    async def instance_stats(
        self, instances: list[tuple[str, Hardware]]
    ) -> dict[str, InstanceStats]:
        stats: dict[str, InstanceStats] = await self.call("instance_stats", instances=instances)
        return stats
