"""The scheduler's filters and weighers (issue 17, part 3), table-driven: each row is the hosts,
what the instance asks, the strategy, and the host chosen or the words of the refusal."""

from __future__ import annotations

import pytest

from gureum.errors import InsufficientCapacity, InvalidInput
from gureum.host.capacity import HostCapacity
from gureum.service.placement import (
    CORDONED,
    PACK,
    READY,
    SPREAD,
    UNREACHABLE,
    HostView,
    Want,
    place,
)

# 4 CPUs (x2 over-commit: 8 vCPUs), 9 GiB of which 1 GiB is the host's: 8192 MiB for guests.
CAP = HostCapacity(cpus=4, memory_mib=9216, memory_reserve_mib=1024, cpu_overcommit=2.0)


def host(name: str, mib: int = 0, cpus: int = 0, **kw: object) -> HostView:
    return HostView(name, kw.pop("state", READY), CAP, cpus, mib, **kw)  # type: ignore[arg-type]


SMALL = Want(cpus=1, memory_mib=1024)

CHOSEN = [
    # (what the row shows, hosts, want, strategy, chosen)
    ("spread takes the freest", [host("h1", 4096), host("h2", 1024), host("h3", 2048)], SMALL,
     SPREAD, "h2"),
    ("pack takes the busiest that fits", [host("h1", 4096), host("h2", 1024), host("h3", 7500)],
     SMALL, PACK, "h1"),
    ("ties go to the first name", [host("h2"), host("h1"), host("h3")], SMALL, SPREAD, "h1"),
    ("ties go to the first name, packing too", [host("h3"), host("h2")], SMALL, PACK, "h2"),
    ("the scarcer of CPU and memory counts", [host("h1", 0, 7), host("h2", 4096, 0)], SMALL,
     SPREAD, "h2"),
    ("a cordoned host takes nothing new", [host("h1", state=CORDONED), host("h2", 6000)], SMALL,
     SPREAD, "h2"),
    ("an unreachable host is not asked", [host("h1", state=UNREACHABLE), host("h2", 6000)],
     SMALL, SPREAD, "h2"),
    ("pinned beats the weigher", [host("h1"), host("h2", 6000)], Want(1, 1024, host="h2"),
     SPREAD, "h2"),
    ("a host too full for the instance is passed over", [host("h1", 7680), host("h2", 7000)],
     Want(1, 1024), PACK, "h2"),
    ("spread groups keep instances apart",
     [host("h1", spread_groups=frozenset({"web"})), host("h2", 4096)],
     Want(1, 1024, spread_group="web"), SPREAD, "h2"),
    ("another group does not", [host("h1", spread_groups=frozenset({"db"})), host("h2", 4096)],
     Want(1, 1024, spread_group="web"), SPREAD, "h1"),
    ("kvm wanted: a kvm host", [host("h1"), host("h2", 4096, accel="kvm")],
     Want(1, 1024, needs_kvm=True), SPREAD, "h2"),
    ("a joined host takes a VM of the catalog", [host("h1", 6000), host("h2", local=False)],
     SMALL, SPREAD, "h2"),
    ("what runs here only stays here", [host("h1", 6000), host("h2", local=False)],
     Want(1, 1024, local_only="containers"), SPREAD, "h1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("hosts", "want", "strategy", "chosen"),
    [row[1:] for row in CHOSEN],
    ids=[row[0] for row in CHOSEN],
)
def test_the_host_chosen(hosts, want, strategy, chosen) -> None:
    assert place(want, hosts, strategy).name == chosen


REFUSED = [
    # (what the row shows, hosts, want, every part the refusal must say)
    ("every host says why", [host("h1", state=CORDONED), host("h2", 8000), host("h3", cpus=8)],
     SMALL, ["h1: cordoned", "h2: not enough host memory", "h3: not enough host CPUs"]),
    ("a pinned host too full is not replaced by another", [host("h1", 8000), host("h2")],
     Want(1, 1024, host="h1"), ["h1: not enough host memory"]),
    ("a spread group with a member everywhere",
     [host("h1", spread_groups=frozenset({"web"})), host("h2", spread_groups=frozenset({"web"}))],
     Want(1, 1024, spread_group="web"), ["h1: already runs", "h2: already runs"]),
    ("no kvm anywhere", [host("h1")], Want(1, 1024, needs_kvm=True), ["h1: has no KVM"]),
    ("an agent that only reports", [host("h1", driven=False)], SMALL,
     ["h1: its agent reports, but is not driven from here yet"]),
    ("here only, and here is full", [host("h1", 8000), host("h2", local=False)],
     Want(1, 1024, local_only="containers"),
     ["h1: not enough host memory", "h2: a joined host does not run containers yet"]),
    ("no hosts at all", [], SMALL, ["no hosts"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("hosts", "want", "said"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
def test_the_refusal_names_each_hosts_reason(hosts, want, said) -> None:
    with pytest.raises(InsufficientCapacity) as refused:
        place(want, hosts)
    for part in said:
        assert part in refused.value.message
    if want.host is not None:  # a pinned launch hears about its own host only
        assert "h2" not in refused.value.message


def test_a_missing_pinned_host_and_an_unknown_strategy_are_bad_input() -> None:
    with pytest.raises(InvalidInput, match="no host named 'h9'"):
        place(Want(1, 1024, host="h9"), [host("h1")])
    with pytest.raises(InvalidInput, match="placement strategy"):
        place(SMALL, [host("h1")], "random")


def test_placing_one_by_one_fills_hosts_as_the_strategy_says() -> None:
    """Ten 1 GiB instances on three hosts, h1 with 1 GiB taken: spread evens them out (4, 4 and
    3 GiB in all), pack fills h1 (7 more fit in its 8 GiB) before h2."""
    for strategy, expected in ((SPREAD, [3, 4, 3]), (PACK, [7, 3, 0])):
        hosts = {n: host(n, 1024 if n == "h1" else 0) for n in ("h1", "h2", "h3")}
        counts = dict.fromkeys(hosts, 0)
        for _ in range(10):
            chosen = place(SMALL, list(hosts.values()), strategy)
            counts[chosen.name] += 1
            h = hosts[chosen.name]
            hosts[chosen.name] = host(h.name, h.committed_mib + 1024, h.committed_cpus + 1)
        assert [counts[n] for n in sorted(counts)] == expected, strategy
