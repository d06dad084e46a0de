"""What an instance uses now, as the host measures it: CPU time, memory, disk and NIC counters.

Read by the service's metrics sampler every few seconds (``service/metrics.py``), never on a
tenant's request: a scrape of ``/metrics`` reads what the last round measured, so no caller can
make the host ask QEMU or a guest anything.

- CPU and memory of a VM: its QEMU process (/proc; PSS shows what it shares with others, such as
  a template's memory). Of a container: its own control group (every process in it).
- The guest's own view of its memory (MemTotal, MemAvailable) through the guest agent, bounded
  in time and size, at most every 30 s (answering costs the guest CPU: under TCG, the host's):
  what a guest answers is hostile, so only two integers are kept.
- Disks: QMP ``query-blockstats`` of the VM's disks (a container has no block device of its own).
- NICs: the host end of each (a VM's TAP, a container's veth), in its network's namespace, one
  ``ip`` call per network per round; its counters turned round to the guest's view (what the
  host end sends, the guest receives).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gureum.errors import GureumError
from gureum.network import netns, tap
from gureum.sys import procs

GUEST_TIMEOUT_S = 2.0  # a guest that does not answer at once is not waited for
GUEST_EVERY_S = 30.0  # how often a guest is asked its memory (it works to answer)
MEMINFO_LIMIT = 4096
T = TypeVar("T")


@dataclass(frozen=True)
class DiskStats:
    device: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


@dataclass(frozen=True)
class NicStats:
    """One NIC's counters as the guest sees them (rx: what it received)."""

    slot: int
    mac: str
    network_id: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class InstanceStats:
    at: float  # when its CPU and memory were read (Unix time): rates are between these
    cpu_seconds: float | None
    rss_bytes: int | None  # a container: its control group's memory
    pss_bytes: int | None  # a VM's QEMU only
    guest_memory_total_bytes: int | None = None
    guest_memory_available_bytes: int | None = None
    disks: tuple[DiskStats, ...] = ()
    nics: tuple[NicStats, ...] = field(default_factory=tuple)


def process(pid: int) -> tuple[float | None, int | None, int | None]:
    """(CPU seconds, RSS, PSS) of one process (a VM's QEMU)."""
    memory = procs.memory(pid)
    rss, pss = memory if memory is not None else (None, None)
    return procs.cpu_seconds(pid), rss, pss


def cgroup_cpu_seconds(folders: list[Path]) -> float | None:
    """CPU time of a control group (v2 ``cpu.stat``, v1 ``cpuacct.usage``)."""
    for folder in folders:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if (folder / "cpu.stat").exists() and (folder / "cgroup.controllers").exists():
                stat = dict(line.split() for line in (folder / "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
            if (folder / "cpuacct.usage").exists():
                return int((folder / "cpuacct.usage").read_text()) / 1e9
    return None


def blockstats(answer: object) -> tuple[DiskStats, ...]:
    """The disks a guest sees (those with a device model attached), from ``query-blockstats``."""
    disks = []
    for dev in answer if isinstance(answer, list) else []:
        qdev = str(dev.get("qdev") or "")
        stats = dev.get("stats") or {}
        if not qdev:
            continue
        name = str(dev.get("device") or "") or qdev.rstrip("/").split("/")[-1]
        if name == "virtio-backend":  # /machine/peripheral/root-disk/virtio-backend
            name = qdev.rstrip("/").split("/")[-2]
        disks.append(
            DiskStats(
                name,
                int(stats.get("rd_bytes", 0)),
                int(stats.get("wr_bytes", 0)),
                int(stats.get("rd_operations", 0)),
                int(stats.get("wr_operations", 0)),
            )
        )
    return tuple(disks)


def meminfo(text: bytes) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from a guest's /proc/meminfo; None where absent or
    not a number (the guest wrote it)."""
    found: dict[str, int] = {}
    for line in text.decode("ascii", errors="replace").splitlines()[:64]:
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            parts = rest.split()
            if parts and parts[0].isdigit() and len(parts[0]) <= 15:
                found[key] = int(parts[0]) * 1024
    return found.get("MemTotal"), found.get("MemAvailable")


async def link_counters(namespace: str) -> dict[str, tuple[int, int, int, int]]:
    """Each interface in a network namespace: (rx bytes, tx bytes, rx packets, tx packets) as
    the host end counts them."""
    try:
        out = await netns.ip(namespace, "-s", "-j", "link", "show")
        links = json.loads(out or "[]")
    except (GureumError, OSError, ValueError):
        return {}
    counters = {}
    for link in links:
        stats = link.get("stats64") or {}
        rx, tx = stats.get("rx") or {}, stats.get("tx") or {}
        counters[str(link.get("ifname"))] = (
            int(rx.get("bytes", 0)),
            int(tx.get("bytes", 0)),
            int(rx.get("packets", 0)),
            int(tx.get("packets", 0)),
        )
    return counters


def nic_stats(
    instance_id: str,
    nics: list[tuple[int, str, str, str]],
    counters: dict[str, dict[str, tuple[int, int, int, int]]],
) -> tuple[NicStats, ...]:
    """An instance's NICs (slot, MAC, network, its namespace), from the round's counters of
    each namespace (``link_counters``)."""
    out = []
    for slot, mac, network_id, namespace in nics:
        found = counters.get(namespace, {}).get(tap.tap_name(instance_id, slot))
        if found is None:
            continue
        host_rx, host_tx, host_rx_packets, host_tx_packets = found
        # The host end receives what the guest sends.
        out.append(
            NicStats(slot, mac, network_id, host_tx, host_rx, host_tx_packets, host_rx_packets)
        )
    return tuple(out)


async def bounded(call: Awaitable[T], default: T) -> T:
    """A guest or QEMU question (asked with GUEST_TIMEOUT_S of its own: never cancelled from
    outside, which would leave its answer in the channel for the next caller); its failure is
    ``default``, not an error (a busy or hostile guest costs its own figures only)."""
    try:
        return await call
    except Exception:  # whatever a guest makes of its answer: it loses its figure, nothing more
        return default
