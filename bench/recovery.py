"""Recovery benchmark: cold boot vs restore of a memory snapshot vs clone from it.

In one run, on one service, all under TCG here:

- cold boot: `start` of a stopped VM, request to guest agent answering;
- restore: `snapshot restore` of a memory snapshot of that VM;
- clone: `clone` from the same memory snapshot (a new VM, identity refreshed);
- snapshot create time (disk-only and with memory);
- restore time of a 256 MiB and a 2 GiB guest, to show it does not grow with memory size.

Each restore/clone is timed twice: to *running* (the guest executes again: state loaded and
`cont` sent, from the boot timeline) and to *ready* (the agent answered and the guest's
identity was refreshed: what the CLI waits for). Ratios are against the cold boot median.

    python bench/recovery.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
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


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


class Bench:
    def __init__(self, home: Path) -> None:
        env = {
            **os.environ,
            "GUREUM_HOME": str(home),
            "GUREUM_CACHE_DIR": str(REPO / ".gureum" / "cache"),
        }
        self.log = open(home / "serve.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gureum.cli.main", "serve"],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.c = Client(Endpoint("http://gureum", home / "gureum.sock"), timeout=600)
        for _ in range(300):
            try:
                self.c.host()
                break
            except Exception:
                time.sleep(0.05)

    def op(self, op: dict) -> tuple[dict, float]:  # type: ignore[type-arg]
        """Wait for an operation; returns it and its duration as the service measured it."""
        done = self.c.wait(op["id"], timeout=600)
        return done, done["finished_at"] - done["created_at"]

    def to_running(self, done: dict, name: str) -> float:  # type: ignore[type-arg]
        """From the request to the guest running again (state loaded, then `cont`)."""
        inst = self.c.instance(name)
        phases = {p["event"]: p["at"] for p in inst["boot"]["phases"]}
        return phases["memory_restored"] - done["created_at"]

    def close(self) -> None:
        for inst in self.c.instances():
            self.c.delete(inst["id"], force=True)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "recovery.json")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    b = Bench(home)
    try:
        b.op(b.c.build_image("tiny"))
        accel = b.c.host()["accel"]
        b.op(b.c.launch("src", "tiny", memory_mib=256)["operation"])
        cold, restore_ready, restore_running, clone_ready, clone_running = [], [], [], [], []
        snap_disk, snap_mem = [], []
        for i in range(args.runs):
            b.op(b.c.action("src", "stop"))
            done, took = b.op(b.c.action("src", "start"))
            cold.append(took)
            snap_disk.append(b.op(b.c.snapshot("src", f"d{i}"))[0]["result"]["seconds"])
            snap_mem.append(b.op(b.c.snapshot("src", f"m{i}", memory=True))[0]["result"]["seconds"])
        for i in range(args.runs):
            done, took = b.op(b.c.restore("src", f"m{i}"))
            restore_ready.append(took)
            restore_running.append(b.to_running(done, "src"))
            res = b.c.clone("src", f"m{i}", f"clone{i}")
            done, took = b.op(res["operation"])
            clone_ready.append(took)
            clone_running.append(b.to_running(done, f"clone{i}"))
            b.c.delete(f"clone{i}", force=True)
        sizes = {}
        for mib in (256, 2048):
            name = f"mem{mib}"
            b.op(b.c.launch(name, "tiny", memory_mib=mib)["operation"])
            b.op(b.c.snapshot(name, "m", memory=True))
            runs, running = [], []
            for _ in range(args.runs):
                done, took = b.op(b.c.restore(name, "m"))
                runs.append(took)
                running.append(b.to_running(done, name))
            sizes[mib] = {"ready_median_s": median(runs), "running_median_s": median(running)}
            b.c.delete(name, force=True)
        c = median(cold)
        result = {
            "accel": accel,
            "runs": args.runs,
            "cold_boot_median_s": c,
            "restore_to_running_median_s": median(restore_running),
            "restore_to_ready_median_s": median(restore_ready),
            "clone_to_running_median_s": median(clone_running),
            "clone_to_ready_median_s": median(clone_ready),
            "ratio_restore_running_vs_cold": round(median(restore_running) / c, 3),
            "ratio_restore_ready_vs_cold": round(median(restore_ready) / c, 3),
            "ratio_clone_running_vs_cold": round(median(clone_running) / c, 3),
            "ratio_clone_ready_vs_cold": round(median(clone_ready) / c, 3),
            "snapshot_disk_median_s": median(snap_disk),
            "snapshot_memory_median_s": median(snap_mem),
            "restore_by_memory_size": sizes,
            "restore_2g_vs_256m_running": round(
                sizes[2048]["running_median_s"] / sizes[256]["running_median_s"], 3
            ),
            "restore_2g_vs_256m_ready": round(
                sizes[2048]["ready_median_s"] / sizes[256]["ready_median_s"], 3
            ),
        }
        print(f"accel {accel}, {args.runs} runs each, 256 MiB guest unless said")
        print(f"cold boot (start -> agent)        median {c:.3f} s")
        for what in ("restore", "clone"):
            running = result[f"{what}_to_running_median_s"]
            ready = result[f"{what}_to_ready_median_s"]
            print(
                f"{what:<7} memory snapshot -> running median {running:.3f} s  "
                f"(x{running / c:.3f} of cold)   -> ready {ready:.3f} s (x{ready / c:.3f})"
            )
        print(
            f"snapshot create: disk {result['snapshot_disk_median_s']:.3f} s, "
            f"with memory {result['snapshot_memory_median_s']:.3f} s"
        )
        for mib, v in sizes.items():
            print(
                f"restore {mib:>4} MiB guest: running {v['running_median_s']:.3f} s, "
                f"ready {v['ready_median_s']:.3f} s"
            )
        print(
            f"2 GiB / 256 MiB restore: running x{result['restore_2g_vs_256m_running']}, "
            f"ready x{result['restore_2g_vs_256m_ready']}"
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        b.close()
        for pid in process.find_by_marker(str(home)):
            procs.kill(pid)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
