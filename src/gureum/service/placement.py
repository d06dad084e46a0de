"""Placement: which host a new instance goes to, decided in one place.

Filters first, each saying why it turns a host away (the refusal lists every host with its
reason, so "no host" is never a mystery); then a weigher orders what is left. Pure: the caller
gives a snapshot of the hosts (state, capacity, what is committed on them, the spread groups of
their instances) taken under the admission lock, and claims the chosen host before letting the
lock go, as admission does on one host.

- ``ready``: a cordoned host takes nothing new; an unreachable one cannot be asked.
- ``driven``: a host whose agent only reports (joined before agents had a command port) takes
  nothing.
- ``here``: what runs on the control plane's own host only yet (a container, a clone of a
  template, a project's own image) goes nowhere else.
- ``pinned``: ``--host NAME`` leaves that host alone (still filtered: pinning never overcommits).
- ``accelerator``: an instance that needs KVM goes only where KVM is.
- ``capacity``: the admission rule of ``host/capacity.py``, the same as on one host.
- ``spread``: anti-affinity: no two instances of one spread group on one host.

Weighers: ``pack`` fills the busiest host that still fits (fewer hosts busy, large holes kept
for large instances); ``spread`` takes the freest (load and failures shared). Ties go to the
host whose name sorts first, so a placement is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gureum.errors import InsufficientCapacity, InvalidInput
from gureum.host.capacity import HostCapacity, admit

READY, CORDONED, UNREACHABLE = "ready", "cordoned", "unreachable"
PACK, SPREAD = "pack", "spread"
STRATEGIES = (PACK, SPREAD)


@dataclass(frozen=True)
class HostView:
    """One host as the scheduler sees it."""

    name: str
    state: str
    capacity: HostCapacity
    committed_cpus: int = 0
    committed_mib: int = 0
    accel: str = "tcg"
    spread_groups: frozenset[str] = field(default_factory=frozenset)
    driven: bool = True  # the control plane can have its agent run what it places there
    local: bool = True  # the control plane's own host

    def free_fraction(self) -> float:
        """The share of the host's guest memory and vCPUs still free, the scarcer of the two."""
        cap = self.capacity
        mem = 1 - self.committed_mib / cap.memory_limit_mib if cap.memory_limit_mib else 0.0
        cpu = 1 - self.committed_cpus / cap.vcpu_limit if cap.vcpu_limit else 0.0
        return min(mem, cpu)


@dataclass(frozen=True)
class Want:
    """What the new instance asks of its host."""

    cpus: int
    memory_mib: int
    host: str | None = None  # pinned
    spread_group: str | None = None
    needs_kvm: bool = False
    local_only: str | None = None  # what makes it run on the control plane's host only yet


Filter = Callable[[Want, HostView], str | None]  # the reason a host is turned away, or None


def _ready(want: Want, host: HostView) -> str | None:
    return None if host.state == READY else host.state


def _driven(want: Want, host: HostView) -> str | None:
    # An agent enrolled without a command port address reports, but cannot be asked.
    return None if host.driven else "its agent reports, but is not driven from here yet"


def _here(want: Want, host: HostView) -> str | None:
    if want.local_only is None or host.local:
        return None
    return f"a joined host does not run {want.local_only} yet"


def _pinned(want: Want, host: HostView) -> str | None:
    return None if want.host in (None, host.name) else f"not {want.host}, which was asked for"


def _accelerator(want: Want, host: HostView) -> str | None:
    return "has no KVM" if want.needs_kvm and host.accel != "kvm" else None


def _capacity(want: Want, host: HostView) -> str | None:
    try:
        admit(host.capacity, host.committed_cpus, host.committed_mib, want.cpus, want.memory_mib)
    except InsufficientCapacity as exc:
        return exc.message
    return None


def _spread(want: Want, host: HostView) -> str | None:
    if want.spread_group is not None and want.spread_group in host.spread_groups:
        return f"already runs an instance of spread group {want.spread_group!r}"
    return None


FILTERS: tuple[Filter, ...] = (
    _ready, _driven, _here, _pinned, _accelerator, _capacity, _spread
)  # fmt: skip


def place(want: Want, hosts: Sequence[HostView], strategy: str = SPREAD) -> HostView:
    """The host the instance goes to; InsufficientCapacity naming each host's reason when none
    will do, InvalidInput for a pinned host that does not exist or an unknown strategy."""
    if strategy not in STRATEGIES:
        raise InvalidInput(
            f"placement strategy is one of {', '.join(STRATEGIES)}, not {strategy!r}"
        )
    if want.host is not None and want.host not in {h.name for h in hosts}:
        raise InvalidInput(f"no host named {want.host!r}")
    fit, refused = [], []
    for host in sorted(hosts, key=lambda h: h.name):
        why = next((r for r in (f(want, host) for f in FILTERS) if r is not None), None)
        if why is None:
            fit.append(host)
        elif want.host in (None, host.name):  # a pinned launch hears about its own host only
            refused.append(f"{host.name}: {why}")
    if not fit:
        raise InsufficientCapacity(
            "no host can take this instance (" + "; ".join(refused or ["no hosts"]) + ")"
        )
    if strategy == PACK:
        return min(fit, key=lambda h: (h.free_fraction(), h.name))
    return min(fit, key=lambda h: (-h.free_fraction(), h.name))
