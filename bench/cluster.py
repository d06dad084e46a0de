"""Cluster benchmark (issue 17): what the cluster adds to a launch, and what the overlay costs.

1. Placement: the scheduler choosing among 3 hosts (the control plane's own and two joined
   ones, each with its reported capacity), median of --runs; baseline, in the same run: the
   same choice on a control plane that has only its own host. Both on PostgreSQL (a private
   server, as the tests run it).
2. Dispatch: one question to a joined host's agent on its command port (one JSON line each
   way, over a connection the control plane keeps: what each command to a remote host costs;
   and, for comparison, over a new TLS 1.3 connection with both certificates checked), median
   of --runs; baseline: the same answer asked in-process, as the control plane's own host is.
   Target: placement and dispatch add at most 50 ms per launch.
3. Overlay: TCP throughput (Python sockets, --mib MiB) and ping round trip between two instances
   of one network on two hosts joined by VXLAN, against two instances of it on one host, in the
   same run. The hosts are two gureum homes with their networks' real namespaces, bridges and
   firewalls on a cluster network of two namespaces; the instances stand as namespaces with a
   veth on the network's bridge (tests/integration/test_overlay.py builds the same), so what is
   measured is the overlay itself, not a guest's virtual NIC. Target: at least 0.7 of same-host.

4. Launches: --launches launches spread over 3 hosts (the control plane's own and two joined
   ones, each behind a real agent port over TLS on loopback), each from the request to its
   operation's end, against the same number placed on the control plane's own host, in the
   same run, both on PostgreSQL. Every host is a FakeHost (tests/unit/fakehost.py: a VM boots in
   no time), so what is measured is the control plane's work and the wire, not QEMU: the
   difference of the means is what placing on and dispatching to a joined host adds to a
   launch (its commands: the image check, the disk, the network, the start, the wait for its
   agent). Target: at most 50 ms per launch.

    python bench/cluster.py [--runs 30] [--mib 256] [--pings 20] [--launches 30]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from console import ms, timed  # noqa: E402
from ec2 import free_port  # noqa: E402
from network import between_namespaces  # noqa: E402
from tests.integration.test_overlay import ADDRESSES, Hosts  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.unit.fakehost import FakeHost  # noqa: E402

from gureum.api.cluster_port import ClusterPort  # noqa: E402
from gureum.config import load_config  # noqa: E402
from gureum.host import enrolment as agent  # noqa: E402
from gureum.host.agent import LocalHostAgent  # noqa: E402
from gureum.host.agent_port import AgentPort  # noqa: E402
from gureum.model.image import Image  # noqa: E402
from gureum.model.instance import DEFAULT_PROJECT  # noqa: E402
from gureum.service.core import Services  # noqa: E402
from gureum.service.instances import LaunchRequest  # noqa: E402
from gureum.service.placement import Want  # noqa: E402

DISPATCH_TARGET_S = 0.050
OVERLAY_TARGET = 0.7


def background_loop() -> tuple[asyncio.AbstractEventLoop, Callable[[Any], Any]]:
    """An event loop in a thread of its own (where the ports serve), and a way to run a
    coroutine on it and wait for its result."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    return loop, on_loop


def stop_ports(
    loop: asyncio.AbstractEventLoop, on_loop: Callable[[Any], Any], ports: list[Any]
) -> None:
    """Stop the agents' and the cluster's ports, then their loop."""
    for one in ports:
        on_loop(one.stop())
    loop.call_soon_threadsafe(loop.stop)


def control_plane(runs: int, root: Path) -> None:
    loop, on_loop = background_loop()

    # Both on PostgreSQL, as a cluster must be (tests/postgres.py: a private server).
    pg = PostgresServer()
    pg.start()
    alone = Services.build(
        load_config(root / "alone", env={"GUREUM_DATABASE_URL": pg.new_database()})
    )
    svc = Services.build(load_config(root / "cp", env={"GUREUM_DATABASE_URL": pg.new_database()}))
    port = ClusterPort(svc.enrolment.ca, svc.enrolment, svc.images)
    svc.enrolment.cluster_listen = f"127.0.0.1:{on_loop(port.start('127.0.0.1', 0))}"
    agents = []
    try:
        for name in ("h2", "h3"):
            token, _ = svc.enrolment.enrol(name, f"127.0.0.1:{free_port()}")
            folder = root / name / "agent"
            agent.join(token, folder)
            config = load_config(root / name)
            host = LocalHostAgent(config)
            agent.heartbeat(folder, agent.facts(host))
            agents.append(AgentPort(config, host))
            on_loop(agents[-1].start())
        assert len(svc.hosts.list()) == 3
        want = Want(1, 256)
        three = timed(lambda: svc.hosts.place(want), runs)
        one = timed(lambda: alone.hosts.place(want), runs)
        print(f"placement among 3 hosts, median of {runs}: {ms(three)}; among 1: {ms(one)}; "
              f"ratio x{three / one:.2f}")  # fmt: skip
        remote = timed(lambda: on_loop(svc.agents.ask("h2", {"op": "facts"})), runs)
        fresh = svc.agents.host("h2")
        fresh.pool = None  # a new connection each time, TLS handshake included
        new = timed(lambda: on_loop(fresh.ask({"op": "facts"})), runs)
        local_host = svc.hosts.host
        here = timed(lambda: agent.facts(local_host), runs)
        print(f"dispatch: a question to h2's agent over its command port, median of {runs}: "
              f"{ms(remote)} on a kept connection, {ms(new)} on a new one; the same answer "
              f"in-process: {ms(here)}; ratio x{remote / here:.1f}")  # fmt: skip
        added = three + remote
        verdict = "met" if added <= DISPATCH_TARGET_S else "NOT met"
        print(f"placement and dispatch add {ms(added)} per launch (one command); "
              f"target <= {ms(DISPATCH_TARGET_S)}: {verdict}")  # fmt: skip
    finally:
        stop_ports(loop, on_loop, [*agents, port])
        svc.close()
        alone.close()
        pg.stop()


def mean_of(fn: Any, runs: int) -> float:
    """The mean time of ``runs`` calls: launches spread over hosts differ by host, and each
    host's share counts."""
    started = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - started) / runs


def launches(count: int, root: Path) -> None:
    loop, on_loop = background_loop()

    pg = PostgresServer()
    pg.start()
    config = load_config(root / "lcp", env={"GUREUM_DATABASE_URL": pg.new_database(),
                                            "GUREUM_RATE_LIMIT": "0"})  # fmt: skip
    svc = Services.build(config, host=FakeHost(config, cpus=64, memory_mib=1 << 20))
    svc.tenancy.ensure_default()
    svc.hosts.report()
    folder = config.images_dir / "tiny" / "v1"  # a catalog image with files of its own
    folder.mkdir(parents=True)
    files = {}
    for role, name, size in (("disk", "disk.qcow2", 1 << 20), ("kernel", "vmlinuz", 4096),
                             ("initrd", "initrd.img", 4096)):  # fmt: skip
        data = bytes(size)
        (folder / name).write_bytes(data)
        files[role] = {"file": name, "bytes": size, "sha256": hashlib.sha256(data).hexdigest()}
    svc.images.store.put(Image("tiny", "v1", "6.1", str(folder), files=files,
                               disk_virtual_bytes=64 << 20))  # fmt: skip
    lifecycle = svc.instances.lifecycle
    port = ClusterPort(svc.enrolment.ca, svc.enrolment, svc.images, lifecycle.host_event)
    svc.enrolment.cluster_listen = f"127.0.0.1:{on_loop(port.start('127.0.0.1', 0))}"
    svc.router.cluster_listen = svc.enrolment.cluster_listen  # networks span, as in a cluster
    agents = []
    n = 0

    def launch(host: str | None) -> None:
        nonlocal n
        n += 1
        req = LaunchRequest(name=f"b{n}", image="tiny", memory_mib=128, host=host)
        _inst, op = on_loop(svc.templates.launch(req, DEFAULT_PROJECT))
        done = on_loop(svc.ops.finished(op.id, 60))
        assert done.error is None, done.error

    try:
        for name in ("h2", "h3"):
            token, _ = svc.enrolment.enrol(name, f"127.0.0.1:{free_port()}")
            agent.join(token, root / name / "agent")
            host_config = load_config(root / name)
            host = FakeHost(host_config, cpus=64, memory_mib=1 << 20)
            host.prepare()
            agent.heartbeat(root / name / "agent", agent.facts(host))
            agents.append(AgentPort(host_config, host))
            on_loop(agents[-1].start())
            launch(name)  # its first: it fetches the image (once per host), not counted
        launch(svc.hosts.name)
        # Spread first, while the three hold one each: the scheduler shares them out.
        spread = mean_of(lambda: launch(None), count)
        placed = {h["name"]: h["instances"] - 1 for h in svc.hosts.list()}
        # Then one here and one on a joined host in turn, so that both see a store of the same
        # size (each launch reads the instances: a later one costs more).
        here = there = 0.0
        for i in range(count):
            here += mean_of(lambda: launch(svc.hosts.name), 1) / count
            on = ("h2", "h3")[i % 2]
            there += mean_of(lambda on=on: launch(on), 1) / count
    finally:
        stop_ports(loop, on_loop, [*agents, port])
        svc.close()
        pg.stop()
    added = there - here
    verdict = "met" if added <= DISPATCH_TARGET_S else "NOT met"
    print(f"launches (fake hosts: the control plane and the wire), mean of {count} each: spread "
          f"over 3 hosts {ms(spread)} (placed {placed}); then in turn, on the control plane's "
          f"own {ms(here)} and on a joined host {ms(there)}, ratio x{there / here:.2f}: placing "
          f"on and dispatching to a joined host adds {ms(added)} per launch; "
          f"target <= {ms(DISPATCH_TARGET_S)}: {verdict}")  # fmt: skip


def overlay(mib: int, pings: int, root: Path) -> None:
    hosts = Hosts(root / "overlay")
    try:
        hosts.build()
        a1 = hosts.vm("a", "n1")
        peer = hosts.add_instance("a", "n1", 12, vm=hosts.ns("vm-a-n1-peer"))
        same_mbps, same_rtt = between_namespaces(a1, peer, "10.91.0.12", mib, pings)
        b1 = hosts.vm("b", "n1")
        far = f"10.91.0.{ADDRESSES[('b', 'n1')]}"
        cross_mbps, cross_rtt = between_namespaces(a1, b1, far, mib, pings)
    finally:
        hosts.close()
    ratio = cross_mbps / same_mbps
    verdict = "met" if ratio >= OVERLAY_TARGET else "NOT met"
    print(f"overlay TCP throughput ({mib} MiB): two hosts {cross_mbps:.0f} MB/s, one host "
          f"{same_mbps:.0f} MB/s; ratio x{ratio:.2f}; "
          f"target >= {OVERLAY_TARGET}: {verdict}")  # fmt: skip
    print(f"overlay round trip (ping, average of {pings}): two hosts {cross_rtt:.3f} ms, one "
          f"host {same_rtt:.3f} ms; ratio x{cross_rtt / same_rtt:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--launches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-cluster-") as tmp:
        control_plane(args.runs, Path(tmp))
        launches(args.launches, Path(tmp))
        overlay(args.mib, args.pings, Path(tmp))


if __name__ == "__main__":
    main()
