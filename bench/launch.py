"""Launch benchmark: gureum launch (API request -> guest agent answers) vs raw QEMU.

Both sides boot the same kernel, initramfs and image disk with the same QEMU command line
(gureum renders it; the raw side drops only -S, since nobody attaches before the guest runs),
to the same readiness point: the guest agent answering a sync. Runs alternate, so drift on the
machine hits both alike. Prints both medians and their ratio, and each idle VM's QEMU RSS.

    python bench/launch.py [--runs 5] [--accel auto|tcg|kvm] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
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
from gureum.engine.qemu.agent import GuestAgent  # noqa: E402
from gureum.engine.qemu.argv import RuntimePaths, VMConfig, render  # noqa: E402
from gureum.errors import Unavailable  # noqa: E402
from gureum.model.hardware import Hardware  # noqa: E402
from gureum.storage.disks import create_overlay  # noqa: E402
from gureum.sys import procs  # noqa: E402

CPUS, MEMORY_MIB = 1, 256


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Service:
    def __init__(self, home: Path, accel: str) -> None:
        self.home = home
        env = {
            **os.environ,
            "GUREUM_HOME": str(home),
            "GUREUM_ACCEL": accel,
            "GUREUM_CACHE_DIR": str(REPO / ".gureum" / "cache"),
        }
        self.env = env
        self.log = open(home / "serve.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gureum.cli.main", "serve"],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.client = Client(Endpoint("http://gureum", home / "gureum.sock"), timeout=600)
        for _ in range(300):
            try:
                self.client.host()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("service did not start")

    def build(self) -> dict:
        op = self.client.build_image("tiny")
        return self.client.wait(op["id"])["result"]["image"]

    def launch(self, name: str) -> tuple[float, dict]:
        started = time.perf_counter()
        # No NIC: the raw side has none either (same command line).
        res = self.client.launch(name, "tiny", cpus=CPUS, memory_mib=MEMORY_MIB, networks=["none"])
        op = self.client.wait(res["operation"]["id"], timeout=600)
        return time.perf_counter() - started, op["result"]["instance"]

    def close(self) -> None:
        for inst in self.client.instances():
            self.client.delete(inst["id"], force=True)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.client.close()

    def discard(self) -> None:
        """Close, then kill whatever of its home is left running and remove the home."""
        try:
            self.close()
        finally:
            for pid in process.find_by_marker(str(self.home)):
                procs.kill(pid)
            shutil.rmtree(self.home, ignore_errors=True)


async def raw_boot(image: dict, workdir: Path, accel: str, tb_size: int) -> tuple[float, int]:
    """Boot with QEMU directly, the same command line gureum uses, to the same readiness."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    folder = Path(image["path"])
    disk = workdir / "root.qcow2"
    await create_overlay(folder / "disk.qcow2", disk, image["disk_virtual_bytes"])
    cfg = VMConfig(
        name="raw",
        hardware=Hardware.for_boot(CPUS, MEMORY_MIB),
        accel=accel,
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.img",
        disk_chain=(disk, folder / "disk.qcow2"),
        runtime=RuntimePaths(workdir / "rt"),
        hostname="raw",
        tcg_tb_size_mib=tb_size,
        start_paused=False,
    )
    cfg.runtime.dir.mkdir()
    started = time.perf_counter()
    proc = subprocess.Popen(
        render(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        # Bytes sent before the guest opens its port wait in the socket; the sync is answered
        # the moment qemu-ga runs, exactly gureum's readiness point. QEMU binds the socket a
        # moment before it listens: a refused connection is tried again.
        while True:
            try:
                await GuestAgent(cfg.runtime.agent).ping(timeout=600)
                break
            except Unavailable:
                await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(3)  # idle, as the gureum VM is when measured
        rss = rss_bytes(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "launch.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    svc = Service(home, args.accel)
    try:
        image = svc.build()
        accel = svc.client.host()["accel"]
        tb_size = 128
        print(
            f"accel: {accel}; image tiny {image['version']} (kernel {image['kernel_version']}); "
            f"{args.runs} runs each, {CPUS} vCPU, {MEMORY_MIB} MiB"
        )
        gureum_s, raw_s, gureum_rss, raw_rss, phases = [], [], [], [], []
        for i in range(args.runs):
            elapsed, inst = svc.launch(f"bench{i}")
            time.sleep(3)
            gureum_rss.append(rss_bytes(inst["pid"]))
            gureum_s.append(elapsed)
            phases.append(inst["boot"])
            svc.client.delete(inst["id"], force=True)
            r_elapsed, r_rss = asyncio.run(raw_boot(image, home / "raw", accel, tb_size))
            raw_s.append(r_elapsed)
            raw_rss.append(r_rss)
            print(f"  run {i + 1}: gureum {elapsed:.3f} s   raw qemu {r_elapsed:.3f} s")
        g, r = statistics.median(gureum_s), statistics.median(raw_s)
        result = {
            "accel": accel,
            "runs": args.runs,
            "gureum_launch_median_s": round(g, 3),
            "raw_qemu_boot_median_s": round(r, 3),
            "ratio": round(g / r, 3),
            "gureum_launch_s": [round(x, 3) for x in gureum_s],
            "raw_qemu_boot_s": [round(x, 3) for x in raw_s],
            "qemu_rss_idle_mib_gureum_median": round(statistics.median(gureum_rss) / 2**20, 1),
            "qemu_rss_idle_mib_raw_median": round(statistics.median(raw_rss) / 2**20, 1),
            "guest_memory_mib": MEMORY_MIB,
            "last_boot_timeline": phases[-1],
        }
        print(
            f"gureum launch median: {g:.3f} s   raw QEMU boot median: {r:.3f} s   "
            f"ratio: {g / r:.3f}"
        )
        print(
            f"QEMU RSS per idle VM ({MEMORY_MIB} MiB guest): gureum "
            f"{result['qemu_rss_idle_mib_gureum_median']} MiB, raw "
            f"{result['qemu_rss_idle_mib_raw_median']} MiB"
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        svc.discard()


if __name__ == "__main__":
    main()
