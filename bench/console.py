"""Console benchmark: how fast the live event stream and /metrics answer, on a service of its own.

1. Event latency: a tiny VM is stopped (and started again) --runs times; each time, how long from
   the service's state change (the event's own ``at``, stamped when the state was written) to the
   event reaching a subscriber's WebSocket. Baseline, in the same run: one JSON message through a
   bare WebSocket server and client on loopback (the floor any stream has).
2. /metrics with --instances instances (tiny containers, each with a NIC; plus the VM), scraped
   --runs times by the administrator, after a metrics round has measured them all. Baseline, in
   the same run: GET /v1/version (the service's cheapest answer).
3. The service's CPU per event: the same stop/start cycles of one container with no subscriber,
   then with --subscribers subscribers; the service process's CPU time over each, per event.

Targets (issue 15): event latency under 50 ms (median); /metrics under 100 ms.

    python bench/console.py [--runs 20] [--instances 100] [--subscribers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from launch import Service  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

from gureum.client.client import connect_events  # noqa: E402
from gureum.sys import procs  # noqa: E402

LATENCY_TARGET_S = 0.050
METRICS_TARGET_S = 0.100


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def baseline_latency(runs: int) -> float:
    """Median time for one JSON message from a bare loopback WebSocket server to its client."""

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        for _ in range(runs):
            await ws.recv()
            await ws.send(json.dumps({"at": time.time(), "kind": "instance"}))

    times = []
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            for _ in range(runs):
                await ws.send("go")
                said = json.loads(await ws.recv())
                times.append(time.time() - said["at"])
    return statistics.median(times)


async def event_latency(svc: Service, name: str, runs: int) -> list[float]:
    """Stop and start ``name`` ``runs`` times; each stop's "stopped" event's delay."""
    ws = await connect_events(svc.client.endpoint)
    frames: asyncio.Queue[dict] = asyncio.Queue()  # type: ignore[type-arg]

    async def read() -> None:
        async for frame in ws:
            said = json.loads(frame)
            said["received"] = time.time()
            await frames.put(said)

    reader = asyncio.create_task(read())
    delays = []
    try:
        for _ in range(runs):
            await asyncio.to_thread(
                lambda: svc.client.wait(svc.client.action(name, "stop")["id"], 120)
            )
            while True:
                said = await asyncio.wait_for(frames.get(), 60)
                if said.get("kind") == "instance" and said.get("state") == "stopped":
                    delays.append(said["received"] - said["at"])
                    break
            await asyncio.to_thread(
                lambda: svc.client.wait(svc.client.action(name, "start")["id"], 300)
            )
    finally:
        reader.cancel()
        await ws.close()
    return delays


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def cpu_per_event(
    svc: Service, name: str, cycles: int, subscribers: int
) -> tuple[float, int]:
    """(service CPU seconds per event, events) over ``cycles`` stop/start cycles of ``name``
    with ``subscribers`` subscribers reading the stream."""
    sockets = [await connect_events(svc.client.endpoint) for _ in range(subscribers)]
    counts = [0] * subscribers

    async def drain(i: int) -> None:
        async for _ in sockets[i]:
            counts[i] += 1

    readers = [asyncio.create_task(drain(i)) for i in range(subscribers)]
    events_before = svc.client.request("GET", "/metrics").count("\n")  # warm the route
    del events_before
    pid = svc.proc.pid
    cpu0 = procs.cpu_seconds(pid) or 0.0
    seq0 = await _position(svc)
    for _ in range(cycles):
        await asyncio.to_thread(lambda: svc.client.wait(svc.client.action(name, "stop")["id"], 120))
        await asyncio.to_thread(
            lambda: svc.client.wait(svc.client.action(name, "start")["id"], 120)
        )
    await asyncio.sleep(0.5)
    cpu1 = procs.cpu_seconds(pid) or 0.0
    events = await _position(svc) - seq0
    for r in readers:
        r.cancel()
    for s in sockets:
        await s.close()
    return (cpu1 - cpu0) / max(1, events), events


async def _position(svc: Service) -> int:
    ws = await connect_events(svc.client.endpoint, all_projects=True)
    try:
        return int(json.loads(await ws.recv())["position"])
    finally:
        await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=10, help="stop/start cycles for CPU/event")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    # 100 instances of 1 vCPU on a small host: admission's over-commit must allow them (they
    # idle); the rounds every 2 s so that the scrape follows them within the run.
    os.environ["GUREUM_CPU_OVERCOMMIT"] = str(max(4, args.instances))
    os.environ["GUREUM_METRICS_INTERVAL"] = "2"
    svc = Service(home, "auto")
    try:
        svc.build()
        client = svc.client
        op = client.launch("bench-vm", "tiny")["operation"]
        client.wait(op["id"], timeout=300)

        base = asyncio.run(baseline_latency(args.runs))
        delays = asyncio.run(event_latency(svc, "bench-vm", args.runs))
        latency = statistics.median(delays)
        print(f"event latency (VM stop -> subscriber), median of {len(delays)}: {ms(latency)} "
              f"(min {ms(min(delays))}, max {ms(max(delays))}); bare loopback WebSocket "
              f"{ms(base)}; ratio x{latency / base:.1f}; target < {ms(LATENCY_TARGET_S)}: "
              f"{'met' if latency < LATENCY_TARGET_S else 'NOT met'}")  # fmt: skip

        started = time.perf_counter()
        for i in range(args.instances):
            res = client.launch(f"bench-c{i}", "tiny", memory_mib=128, container=True)
            client.wait(res["operation"]["id"], timeout=120)
        print(f"{args.instances} containers launched in {time.perf_counter() - started:.1f} s")
        ids = {i["id"] for i in client.instances() if i["state"] == "running"}
        deadline = time.time() + 60
        text = ""
        while time.time() < deadline:  # a round that saw them all
            text = client.metrics()
            seen = {line.split('instance_id="')[1].split('"')[0]
                    for line in text.splitlines()
                    if line.startswith("gureum_instance_cpu_seconds_total")}  # fmt: skip
            if ids <= seen:
                break
            time.sleep(0.5)
        round_s = float(next(line.split()[1] for line in text.splitlines()
                             if line.startswith("gureum_metrics_round_seconds")))  # fmt: skip
        scrape = timed(client.metrics, args.runs)
        version = timed(client.version, args.runs)
        print(f"/metrics with {len(ids)} running instances ({len(text)} bytes, "
              f"{text.count(chr(10))} lines), median of {args.runs}: {ms(scrape)}; "
              f"GET /v1/version {ms(version)}; ratio x{scrape / version:.1f}; "
              f"target < {ms(METRICS_TARGET_S)}: "
              f"{'met' if scrape < METRICS_TARGET_S else 'NOT met'}; "
              f"one metrics round of them all took {ms(round_s)}")  # fmt: skip

        alone, n0 = asyncio.run(cpu_per_event(svc, "bench-c0", args.cycles, 0))
        many, n1 = asyncio.run(cpu_per_event(svc, "bench-c0", args.cycles, args.subscribers))
        print(f"service CPU per event ({args.cycles} stop/start cycles of a container, "
              f"{len(ids)} instances): {ms(alone)} with no subscriber ({n0} events), "
              f"{ms(many)} with {args.subscribers} ({n1} events); "
              f"ratio x{many / max(alone, 1e-9):.2f}")  # fmt: skip
    finally:
        svc.discard()


if __name__ == "__main__":
    main()
