"""The DHCP and DNS host files of a network, written by several syncs at once: two VMs of one
network booting together (EC2's RunInstances with a count of 2) each sync it, and the second
writer once found the first had renamed the shared temporary file away (FileNotFoundError:
the launch failed)."""

from __future__ import annotations

import threading
from pathlib import Path

from gureum.model.network import Network, Nic
from gureum.network.dhcp import Dhcp


def test_concurrent_writes_of_the_host_files_all_succeed_and_agree(tmp_path: Path) -> None:
    net = Network("n-1", "p-1", "default", "10.88.0.0/24", False, False, 0.0)
    dhcp = Dhcp(tmp_path / "n-1", "gureum-n-1", net)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        nics = [(Nic(f"nic-{k}", f"i-{k}", "n-1", 0, f"52:54:00:00:00:{k:02x}",
                     f"10.88.0.{k + 2}", 0.0), f"vm{k}")]  # fmt: skip
        try:
            for _ in range(200):
                dhcp.write_hosts(nics)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    # Both files come from one and the same call: the last writer's.
    name = (tmp_path / "n-1" / "hosts").read_text().split()[1]
    assert (tmp_path / "n-1" / "dhcp-hosts").read_text().split(",")[2] == name
