"""EC2 API benchmark: DescribeInstances with --instances instances through boto3 over HTTPS, from
--clients concurrent clients, against the same listing through gureum's own API (GET
/v1/instances with a token, over the same HTTPS listener) in the same run. Prints requests per
second and p50/p99 of each, and the ratio (target: at least 0.5, the EC2 layer costing at most
twice gureum's own API).

The instances are tiny containers (cheap to hold a hundred of); the rate limits are off for the
run (they would measure themselves).

    python bench/ec2.py [--instances 100] [--clients 20] [--requests 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import boto3  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402
from launch import Service  # noqa: E402

from gureum.client.client import Client, Endpoint  # noqa: E402

TARGET = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(
    clients: int, requests: int, make: Callable[[], Callable[[], object]]
) -> tuple[float, list[float]]:
    """(requests per second, latencies) of ``clients`` threads each making ``requests`` calls
    with a client of its own (made before the clock starts)."""
    calls = [make() for _ in range(clients)]
    for call in calls:
        call()  # connected and warm
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def worker(call: Callable[[], object]) -> None:
        mine = []
        start.wait()
        for _ in range(requests):
            began = time.perf_counter()
            call()
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - began), latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per client")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    port = free_port()
    os.environ |= {
        "GUREUM_LISTEN": f"127.0.0.1:{port}",
        "GUREUM_RATE_LIMIT": "0",
        "GUREUM_CPU_OVERCOMMIT": str(max(4, args.instances)),
    }
    svc = Service(home, "auto")
    try:
        svc.build()
        client = svc.client
        client.create_user("bench")
        client.set_member("default", "bench", "member")
        token = client.create_token("api", user="bench")["token"]
        key = client.create_token("sdk", user="bench", aws_project="default")
        started = time.perf_counter()
        for i in range(args.instances):
            res = client.launch(f"b{i}", "tiny", memory_mib=128, container=True)
            client.wait(res["operation"]["id"], timeout=120)
        print(f"{args.instances} containers launched in {time.perf_counter() - started:.1f} s")
        url = f"https://127.0.0.1:{port}"
        cert = (home / "tls" / "cert.pem").read_text()

        def own() -> Callable[[], object]:
            c = Client(Endpoint(url, None, token, "default", cert))
            return lambda: c.instances()

        def ec2() -> Callable[[], object]:
            e = boto3.client(
                "ec2",
                endpoint_url=f"{url}/ec2",
                region_name="gureum-1",
                aws_access_key_id=key["access_key_id"],
                aws_secret_access_key=key["secret_access_key"],
                verify=str(home / "tls" / "cert.pem"),
                config=BotoConfig(retries={"max_attempts": 1}, max_pool_connections=4),
            )

            def describe() -> object:
                found = e.describe_instances()["Reservations"]
                assert len(found) == args.instances, len(found)
                return found

            return describe

        base_rps, base = load(args.clients, args.requests, own)
        ec2_rps, lat = load(args.clients, args.requests, ec2)
        n = args.clients * args.requests
        print(json.dumps({"instances": args.instances, "clients": args.clients, "requests": n}))
        for label, rps, times in (
            ("gureum API GET /v1/instances", base_rps, base),
            ("EC2 API DescribeInstances", ec2_rps, lat),
        ):
            p50, p99 = pct(times, 50) * 1000, pct(times, 99) * 1000
            print(f"{label:30} {rps:6.1f} req/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        ratio = ec2_rps / base_rps
        print(
            f"ratio EC2/gureum (requests per second): x{ratio:.2f}; target >= {TARGET}: "
            f"{'met' if ratio >= TARGET else 'NOT met'}; median latency ratio "
            f"x{statistics.median(lat) / statistics.median(base):.2f}"
        )
    finally:
        svc.discard()


if __name__ == "__main__":
    main()
