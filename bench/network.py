"""Network benchmark: guest-to-guest TCP throughput and round-trip time on one gureum network,
against the same measurement between two network namespaces joined by a veth pair on the host
(the ceiling without virtualisation), in the same run.

Guests: busybox `httpd` serving a file from tmpfs and `wget` fetching it, timed in the guest,
for throughput; `ping` for RTT. Host
baseline: Python sockets for throughput, `ping` for RTT, in two namespaces this script makes
and removes. All traffic stays inside namespaces.

    python bench/network.py [--mib 64] [--pings 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from gureum.client.client import Client, Endpoint  # noqa: E402
from gureum.engine.qemu import process  # noqa: E402
from gureum.sys import procs  # noqa: E402

RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); c, _ = s.accept()
while c.recv(1 << 20): pass
"""
SENDER = """
import socket, sys, time
total = int(sys.argv[2]) << 20; block = b"\\0" * (1 << 16)
s = socket.create_connection((sys.argv[1], 5001)); t = time.perf_counter(); sent = 0
while sent < total: s.sendall(block); sent += len(block)
s.close(); print(total / (time.perf_counter() - t) / 1e6)
"""


def ping_avg_ms(text: str) -> float:
    match = re.search(r"= [\d.]+/([\d.]+)/", text)
    if not match:
        raise RuntimeError(f"no ping summary in: {text[-300:]}")
    return float(match.group(1))


def between_namespaces(
    client: str, server: str, server_ip: str, mib: int, pings: int
) -> tuple[float, float]:
    """TCP throughput (MB/s, Python sockets) and ping round trip (ms, average) from namespace
    ``client`` to ``server_ip`` in namespace ``server``."""
    out = subprocess.run(
        ["ip", "netns", "exec", client, "ping", "-c", str(pings), "-i", "0.2", server_ip],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rtt = ping_avg_ms(out)
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", RECEIVER, server_ip]
    )
    time.sleep(0.5)
    sent = subprocess.run(
        ["ip", "netns", "exec", client, sys.executable, "-c", SENDER, server_ip, str(mib)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    receiver.wait(30)
    return float(sent), rtt


def veth_baseline(mib: int, pings: int) -> tuple[float, float]:
    ns1, ns2 = "gureum-bench-a", "gureum-bench-b"

    def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    for ns in (ns1, ns2):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        run("ip", "netns", "add", ns)
    try:
        run(
            "ip",
            "-n",
            ns1,
            "link",
            "add",
            "veth-a",
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            ns2,
        )
        for ns, dev, addr in ((ns1, "veth-a", "10.77.1.1/24"), (ns2, "veth-b", "10.77.1.2/24")):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return between_namespaces(ns1, ns2, "10.77.1.2", mib, pings)
    finally:
        for ns in (ns1, ns2):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "network.json")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    env = {
        **os.environ,
        "GUREUM_HOME": str(home),
        "GUREUM_CACHE_DIR": str(REPO / ".gureum" / "cache"),
    }
    log = open(home / "serve.out", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "gureum.cli.main", "serve"], env=env, stdout=log, stderr=log
    )
    c = Client(Endpoint("http://gureum", home / "gureum.sock"), timeout=600)
    try:
        for _ in range(300):
            try:
                c.host()
                break
            except Exception:
                time.sleep(0.05)
        c.wait(c.build_image("tiny")["id"])
        c.create_network("bench", "10.77.0.0/24")
        for name in ("ga", "gb"):
            c.wait(c.launch(name, "tiny", memory_mib=256, networks=["bench"])["operation"]["id"])

        def sh(name: str, script: str) -> str:
            res = c.exec(name, ["sh", "-c", script], timeout=300)
            return (res["stdout"] + res["stderr"]).decode()

        sh("ga", "ping -c 3 -W 2 gb")  # warm up ARP and TCG
        guest_rtt = ping_avg_ms(sh("ga", f"ping -c {args.pings} -i 0.2 gb"))
        # busybox's nc stops early on big pipes; its httpd and wget move bytes faithfully.
        sh(
            "gb",
            f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=65536 "
            f"count={args.mib * 16} 2>/dev/null && httpd -p 8000 -h /tmp/www",
        )
        out = sh("ga", "time wget -q -O /dev/null http://gb:8000/big")
        match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
        if not match:
            raise RuntimeError(f"no timing from the guest: {out}")
        seconds = int(match.group(1)) * 60 + float(match.group(2))
        guest_mbps = args.mib * 1024 * 1024 / seconds / 1e6
        accel = c.host()["accel"]
    finally:
        for inst in c.instances():
            c.delete(inst["id"], force=True)
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        for pid in process.find_by_marker(str(home)):
            procs.kill(pid)
        shutil.rmtree(home, ignore_errors=True)
    veth_mbps, veth_rtt = veth_baseline(args.mib * 4, args.pings)
    result = {
        "accel": accel,
        "guest_tcp_mb_per_s": round(guest_mbps, 1),
        "veth_tcp_mb_per_s": round(veth_mbps, 1),
        "throughput_ratio_guest_vs_veth": round(guest_mbps / veth_mbps, 4),
        "guest_rtt_ms": guest_rtt,
        "veth_rtt_ms": veth_rtt,
        "rtt_ratio_guest_vs_veth": round(guest_rtt / veth_rtt, 1),
        "payload_mib": args.mib,
    }
    print(f"accel {accel}; guest to guest on one gureum network vs two namespaces on a veth pair")
    print(
        f"TCP throughput: guests {guest_mbps:.1f} MB/s, veth {veth_mbps:.1f} MB/s, "
        f"ratio {guest_mbps / veth_mbps:.4f}"
    )
    print(
        f"round trip:     guests {guest_rtt:.3f} ms, veth {veth_rtt:.3f} ms, "
        f"ratio {guest_rtt / veth_rtt:.1f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
