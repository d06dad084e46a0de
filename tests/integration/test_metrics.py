"""/metrics against a real service and a real tiny VM: each figure checked against what the host's
/proc and the guest itself report (the scoping by token and the graphs' arithmetic:
tests/unit/test_metrics.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gureum.sys import procs
from tests.integration.conftest import Service
from tests.waiting import wait_for

MIB = 1 << 20


def scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with service.client() as c:
        text = c.metrics()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def pick(figures: dict, metric: str, **labels: str) -> float:  # type: ignore[type-arg]
    found = [
        v for (n, lab), v in figures.items() if n == metric and labels.items() <= dict(lab).items()
    ]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def next_round(service: Service, after: float) -> dict:  # type: ignore[type-arg]
    """The figures of the first metrics round to begin after ``after``."""
    found: list[dict] = []  # type: ignore[type-arg]

    def fresh() -> bool:
        figures = scrape(service)
        began = pick(figures, "gureum_metrics_round_timestamp_seconds")
        found[:] = [figures] if began > after + 0.01 else []
        return bool(found)

    wait_for(fresh, 30, interval=0.2, what="a metrics round after the change")
    return found[0]


def test_metrics_match_what_the_host_and_the_guest_report(service: Service) -> None:
    vm = service.launch("met1")
    try:
        key = {"instance_id": vm["id"]}
        with service.client() as c:
            pid = c.instance("met1")["pid"]
        before = next_round(service, time.time())
        written_before = pick(before, "gureum_instance_disk_written_bytes_total", **key)
        # 8 MiB to its disk, and traffic on its NIC (to its gateway).
        service.exec("met1", "dd", "if=/dev/zero", "of=/root/m", "bs=1M", "count=8", "conv=fsync")
        gateway = service.exec("met1", "sh", "-c", "ip route | awk '/default/ {print $3}'").strip()
        service.exec("met1", "ping", "-c", "5", "-s", "1000", "-W", "2", gateway)
        guest_tx = int(service.exec("met1", "cat", "/sys/class/net/eth0/statistics/tx_bytes"))
        guest_rx = int(service.exec("met1", "cat", "/sys/class/net/eth0/statistics/rx_bytes"))
        meminfo = service.exec("met1", "cat", "/proc/meminfo")
        figures = next_round(service, time.time())
        real_cpu = procs.cpu_seconds(pid) or 0.0
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        real_rss = int(status["VmRSS"].split()[0]) * 1024

        # CPU: the round's reading is at most a few seconds of the host's CPUs behind.
        cpu = pick(figures, "gureum_instance_cpu_seconds_total", **key)
        assert 0 < cpu <= real_cpu + 0.05
        assert real_cpu - cpu < 10 * (os.cpu_count() or 1)
        # Memory: QEMU's RSS as /proc has it (within 15%), PSS no more than RSS.
        rss = pick(figures, "gureum_instance_memory_rss_bytes", **key)
        assert abs(rss - real_rss) <= 0.15 * real_rss, (rss, real_rss)
        assert 0 < pick(figures, "gureum_instance_memory_pss_bytes", **key) <= rss
        # The guest's own view: exactly what its /proc/meminfo says.
        total = next(x for x in meminfo.splitlines() if x.startswith("MemTotal:"))
        total_kib = int(total.split()[1])
        assert pick(figures, "gureum_instance_guest_memory_total_bytes", **key) == total_kib * 1024
        # Disk: the 8 MiB written are in QEMU's blockstats.
        written = pick(figures, "gureum_instance_disk_written_bytes_total", **key)
        assert written - written_before >= 8 * MIB
        # NIC: what the host end counts is what the guest counts (within the few packets that
        # may cross between the two readings).
        tx = pick(figures, "gureum_instance_network_transmit_bytes_total", **key)
        rx = pick(figures, "gureum_instance_network_receive_bytes_total", **key)
        assert guest_tx >= 5 * 1000 and abs(tx - guest_tx) <= 0.05 * guest_tx + 2048, (tx, guest_tx)
        assert abs(rx - guest_rx) <= 0.05 * guest_rx + 2048, (rx, guest_rx)
        assert pick(figures, "gureum_instance_info", **key, state="running") == 1
        # The graphs: one point per round, with a CPU figure.
        with service.client() as c:
            graph = c.instance_metrics(vm["id"])
        assert graph["points"] and graph["points"][-1]["cpu_percent"] is not None
    finally:
        service.cli("delete", "met1", "--force", check=False)
