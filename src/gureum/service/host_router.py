"""The ``HostAgent`` every service holds: this host's own agent, with whatever concerns an
instance on a joined host sent to that host's agent (issue 17).

Which host a call is for is read from its arguments, by the interface's own signatures:

- one naming an instance (``instance_id``, or a ``VMSpec``) goes where the store placed that
  instance (``Instance.host``);
- one naming files goes where the files are: a joined host's are named ``REMOTE_ROOT/<host>/...``
  (``host/remote.py``), as ``path_on`` names a disk layer the store recorded on that host;
- everything else (capacity, the pool, the metadata service, projects' control groups) is this
  host's.

What does not travel to a joined host yet (memory images, consoles, hot-plugging, backups) is
refused with ``InvalidState`` naming it, and never done on this host instead.
"""

from __future__ import annotations

import inspect
import ipaddress
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gureum.errors import InvalidInput, InvalidState
from gureum.host.interface import HostAgent, VMSpec
from gureum.host.remote import RemoteHostAgent, host_of
from gureum.host.remote_calls import signature
from gureum.service.agents import Agents
from gureum.store.instances import InstanceStore


def _route(name: str) -> str | None:
    """How a call of ``name`` finds its host: by "instance", by "path", or None (this host)."""
    method = getattr(HostAgent, name, None)
    if not callable(method):
        return None
    params = inspect.signature(method).parameters
    if "instance_id" in params or "spec" in params:
        return "instance"
    hints = typing.get_type_hints(method)
    if any(_names_paths(hint) for key, hint in hints.items() if key != "return"):
        return "path"
    return None


def _names_paths(hint: Any) -> bool:
    return hint is Path or any(_names_paths(a) for a in typing.get_args(hint))


def _paths(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    return []


ROUTES = {name: route for name in dir(HostAgent) if (route := _route(name)) is not None}
ASYNC = frozenset(n for n in ROUTES if inspect.iscoroutinefunction(getattr(HostAgent, n)))


class HostRouter:
    def __init__(
        self,
        local: HostAgent,
        instances: InstanceStore,
        agents: Agents,
        name: str,
        cluster_listen: str = "",
    ) -> None:
        self.local, self.instances, self.agents, self.name = local, instances, agents, name
        self.cluster_listen = cluster_listen  # this host's cluster address, HOST:PORT

    def cluster_address(self, host: str | None) -> str | None:
        """The IPv4 address ``host`` is reached at on the cluster network (where networks that
        span hosts carry their VXLAN): the control plane's ``cluster_listen``, a joined host's
        enrolled address. None: it has none (a control plane with no cluster port)."""
        if self.is_local(host):
            where: str | None = self.cluster_listen or None
        else:
            rec = self.agents.store.get(str(host))
            where = rec.address if rec is not None else None
        if where is None:
            return None
        address = where.rpartition(":")[0].strip("[]")
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        # 0.0.0.0 (listening everywhere) or a multicast address names no one host to send to.
        return None if ip.is_unspecified or ip.is_multicast else str(ip)

    def is_local(self, host: str | None) -> bool:
        """Whether ``host`` (as an instance or a layer records it) is this one."""
        return host is None or host == self.name

    def on(self, host: str | None) -> HostAgent | RemoteHostAgent:
        """The agent of ``host``."""
        return self.local if self.is_local(host) else self.agents.host(str(host))

    def remote(self, host: str) -> RemoteHostAgent:
        """A joined host's agent (NotFound for a host that is not one)."""
        return self.agents.host(host)

    def path_on(self, host: str | None, relative: str) -> Path:
        """A file the store recorded (relative to a home) on ``host``, as this side names it."""
        return self.on(host).path(relative)

    def host_of_instance(self, instance_id: str) -> str | None:
        inst = self.instances.get(instance_id)
        return None if inst is None or self.is_local(inst.host) else inst.host

    def _target(self, name: str, bound: dict[str, Any]) -> str | None:
        """The joined host a call is for (None: this one)."""
        if ROUTES[name] == "instance":
            spec = bound.get("spec")
            instance_id = spec.instance_id if isinstance(spec, VMSpec) else bound["instance_id"]
            return self.host_of_instance(instance_id)
        hosts = {host_of(p) for v in bound.values() for p in _paths(v)}
        if len(hosts) > 1:
            raise InvalidInput(f"{name} was given files of more than one host")
        return hosts.pop() if hosts else None

    def _remote(self, host: str, name: str) -> Callable[..., Any]:
        found = getattr(self.agents.host(host), name, None)
        if found is None:
            what = name.replace("_", " ")
            raise InvalidState(f"{what} is not supported yet for what is on joined host {host}")
        return typing.cast(Callable[..., Any], found)

    def __getattr__(self, name: str) -> Any:
        here = getattr(self.local, name)
        if name not in ROUTES:
            return here
        bind = signature(name).bind

        def target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
            bound = bind(None, *args, **kwargs).arguments
            return self._target(name, bound)

        if name in ASYNC:

            async def routed_async(*args: Any, **kwargs: Any) -> Any:
                host = target(args, kwargs)
                call = here if host is None else self._remote(host, name)
                return await call(*args, **kwargs)

            return routed_async

        def routed(*args: Any, **kwargs: Any) -> Any:
            host = target(args, kwargs)
            return (here if host is None else self._remote(host, name))(*args, **kwargs)

        return routed
