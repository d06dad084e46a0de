"""API benchmark: many clients at once against one service, SQLite store vs PostgreSQL store.

For each store backend, a real `gureum serve` with its HTTPS listener on loopback, 100
instances in its store (stopped VMs: this measures the API and the store, not QEMU), and
--clients concurrent clients, each with its own connection and token-authenticated requests,
for --seconds: half `GET /v1/instances` (the whole list of 100), half `GET /v1/instances/NAME`;
then one client alone for a quarter of that (a single request's latency, with no queue).
The baseline, run the same way on the same service just before, is `GET /v1/version`
(authentication and routing, no store query): the ratios say what the store work costs.

    python bench/api.py [--clients 50] [--seconds 20] [--json out.json]

The PostgreSQL server is a private one from Debian's postgresql-15 (as in the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

from gureum.model.instance import Instance, InstanceSpec, State  # noqa: E402
from gureum.model.tenancy import Role  # noqa: E402
from gureum.service.tenancy import SUPERUSER, TenancyService  # noqa: E402
from gureum.store.db import Database  # noqa: E402
from gureum.store.instances import InstanceStore  # noqa: E402
from gureum.store.tenancy import TenancyStore  # noqa: E402

INSTANCES = 100


def populate(db: Database) -> str:
    """100 stopped instances in the default project, and a token of one of its admins."""
    store = InstanceStore(db)
    now = time.time()
    for i in range(INSTANCES):
        spec = InstanceSpec(f"vm{i:03d}", "tiny", 1 + i % 4, 256 * (1 + i % 4), 2 << 30)
        store.insert(Instance(f"i-{i:012x}", spec, State.STOPPED, now, "v1"))
    tenancy = TenancyService(TenancyStore(db))
    tenancy.ensure_default()
    user = tenancy.create_user("bench")
    tenancy.store.set_role("p-default", user.id, Role.ADMIN)
    return tenancy.create_token(SUPERUSER, "bench", "bench")[1]


class Service:
    def __init__(self, database_url: str | None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUREUM_")}
        env.update(GUREUM_HOME=str(self.home), GUREUM_LISTEN=f"127.0.0.1:{self.port}",
                   GUREUM_RATE_LIMIT="0")  # fmt: skip
        if database_url:
            env["GUREUM_DATABASE_URL"] = database_url
        db = Database.open_url(database_url) if database_url else Database.open_sqlite(
            self.home / "gureum.db"
        )  # fmt: skip
        self.token = populate(db)
        db.close()
        self.log = open(self.home / "serve.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gureum.cli.main", "serve"],
                                     env=env, stdout=self.log, stderr=self.log)  # fmt: skip
        cert = self.home / "tls" / "cert.pem"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cert.exists():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port)),
                ):
                    break
            if self.proc.poll() is not None:
                raise RuntimeError((self.home / "serve.out").read_text()[-2000:])
            time.sleep(0.1)
        self.ssl = ssl.create_default_context(cafile=str(cert))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


async def load(svc: Service, paths: list[str], clients: int, seconds: float) -> dict[str, object]:
    """``clients`` workers, each cycling through ``paths`` until time is up."""
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    errors = 0
    headers = {"Authorization": f"Bearer {svc.token}"}
    base = f"https://127.0.0.1:{svc.port}"

    async def worker(k: int, until: float) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, verify=svc.ssl, headers=headers) as c:
            i = k
            while time.monotonic() < until:
                path = paths[i % len(paths)]
                i += 1
                t0 = time.perf_counter()
                r = await c.get(path.replace("{k}", f"{i % INSTANCES:03d}"))
                latencies[path].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

    await asyncio.gather(*(worker(k, time.monotonic() + 2) for k in range(clients)))  # warm
    for v in latencies.values():
        v.clear()
    errors = 0
    cpu0 = svc.cpu_seconds()
    started = time.monotonic()
    await asyncio.gather(*(worker(k, started + seconds) for k in range(clients)))
    took = time.monotonic() - started
    total = sum(len(v) for v in latencies.values())
    out: dict[str, object] = {
        "requests": total,
        "errors": errors,
        "req_per_s": round(total / took, 1),
        # The service's own CPU per request: on a small host the load clients share the cores,
        # so this says more about the service than req/s does.
        "service_cpu_ms_per_req": round((svc.cpu_seconds() - cpu0) / total * 1000, 3),
    }
    for path, values in latencies.items():
        q = statistics.quantiles(values, n=100)
        out[path] = {"p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "api.json")
    args = parser.parse_args()
    pg = PostgresServer()
    result: dict[str, object] = {"clients": args.clients, "seconds": args.seconds,
                                 "instances": INSTANCES, "cpus": os.cpu_count()}  # fmt: skip
    try:
        pg.start()
        for backend in ("sqlite", "postgresql"):
            svc = Service(pg.new_database() if backend == "postgresql" else None)
            try:
                base = asyncio.run(load(svc, ["/v1/version"], args.clients, args.seconds / 2))
                paths = ["/v1/instances", "/v1/instances/vm{k}"]
                work = asyncio.run(load(svc, paths, args.clients, args.seconds))
                # One client alone: what a single request costs, no queue in front of it.
                alone = asyncio.run(load(svc, paths, 1, args.seconds / 4))
            finally:
                svc.close()
            work["ratio_vs_version"] = round(work["req_per_s"] / base["req_per_s"], 3)  # type: ignore[operator]
            result[backend] = {"baseline_version": base, "list_and_show": work,
                               "one_client": alone}  # fmt: skip
            print(f"{backend:10s} version {base['req_per_s']:7.1f} req/s | list+show "
                  f"{work['req_per_s']:7.1f} req/s (x{work['ratio_vs_version']} of version), "
                  f"list p50 {work['/v1/instances']['p50_ms']} ms p99 "  # type: ignore[index]
                  f"{work['/v1/instances']['p99_ms']} ms, show p50 "  # type: ignore[index]
                  f"{work['/v1/instances/vm{k}']['p50_ms']} ms p99 "  # type: ignore[index]
                  f"{work['/v1/instances/vm{k}']['p99_ms']} ms, errors {work['errors']}; "
                  f"service CPU per request {base['service_cpu_ms_per_req']} ms (version), "
                  f"{work['service_cpu_ms_per_req']} ms (list+show); one client alone: list "
                  f"p50 {alone['/v1/instances']['p50_ms']} ms, show p50 "  # type: ignore[index]
                  f"{alone['/v1/instances/vm{k}']['p50_ms']} ms",  # type: ignore[index]
                  flush=True)  # fmt: skip
    finally:
        pg.stop()
    sq, pq = result["sqlite"], result["postgresql"]  # type: ignore[index]
    result["ratio_postgresql_vs_sqlite"] = round(
        pq["list_and_show"]["req_per_s"] / sq["list_and_show"]["req_per_s"],
        3,  # type: ignore[index]
    )
    print(f"PostgreSQL / SQLite throughput on list+show: x{result['ratio_postgresql_vs_sqlite']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
