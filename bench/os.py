"""OS benchmark: a cold launch of `debian` to "SSH answers" and to "cloud-init done", gureum
against raw QEMU booting the same image with the same command line, in the same run.

Each run launches a `debian` VM through the API and times, from the request: the SSH banner on
port 22 (read from inside the network's namespace, as a tunnel would) and `cloud-init status`
saying done. Then the VM is stopped and its very QEMU command line (read from /proc) is run
directly: the same machine, the same NIC (its TAP, MAC and address, so the network's DHCP and
metadata answer it as they answered gureum's VM), on a fresh overlay of the same image disk,
so cloud-init's first boot does all its work again; only -S goes (nobody attaches first). The
same two points are timed from QEMU's start. Runs alternate, so drift hits both alike. Prints
the medians and their ratios, and `systemd-analyze` of one boot (kernel, userspace, the five
slowest units).

    python bench/os.py [--runs 3] [--json bench/results/os.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from launch import Service  # noqa: E402

from gureum.engine.qemu.agent import GuestAgent  # noqa: E402
from gureum.errors import GureumError  # noqa: E402
from gureum.network import netns, tap  # noqa: E402
from gureum.storage.disks import create_overlay  # noqa: E402

CPUS, MEMORY_MIB = 2, 1024
POLL_S = 0.25
LIMIT_S = 600.0


def ssh_banner(namespace: str, ip: str) -> bool:
    """Does port 22 answer with an SSH banner, asked from inside the network's namespace?"""

    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            try:
                s.connect((ip, 22))
                return s.recv(16).startswith(b"SSH-")
            except OSError:
                return False

    return netns.run_in(namespace, probe)


def wait_until(check, started: float, what: str) -> float:  # type: ignore[no-untyped-def]
    while time.perf_counter() - started < LIMIT_S:
        if check():
            return time.perf_counter() - started
        time.sleep(POLL_S)
    raise TimeoutError(f"{what} not within {LIMIT_S:.0f} s")


def cloud_init_done(run) -> bool:  # type: ignore[no-untyped-def]
    """``run(argv) -> (exit code, stdout)`` in the guest."""
    try:
        code, out = run(["cloud-init", "status"])
    except (GureumError, Exception):
        return False
    if "status: error" in out:
        raise RuntimeError(f"cloud-init failed: {out}")
    return code == 0 and "status: done" in out


def raw_argv(argv: list[str], old_run: Path, new_run: Path, old_top: Path, new_top: Path,
             fd: int) -> list[str]:  # fmt: skip
    out = []
    for arg in argv:
        if arg == "-S":
            continue
        arg = arg.replace(str(old_run), str(new_run)).replace(str(old_top), str(new_top))
        arg = re.sub(r"^(tap,id=net0,fd=)\d+$", rf"\g<1>{fd}", arg)
        out.append(arg)
    return out


class Bench:
    def __init__(self, svc: Service, image: dict, key: str) -> None:
        self.svc = svc
        self.c = svc.client
        self.image = image
        self.key = key
        self.rule_made = False
        # With a private key: gureum_run also times a real login with it (`gureum ssh`), kept in
        # login_s: the banner alone does not say the instance's key is in place.
        self.login_key: Path | None = None
        self.login_s: float | None = None

    def gureum_run(self, name: str, *, cold: bool = False) -> tuple[float, float, dict]:
        """(launch-to-SSH, launch-to-cloud-init-done, the instance); ``cold``: boot even where
        the image has a template of this shape (bench/instant.py)."""
        started = time.perf_counter()
        res = self.c.launch(name, "debian", cpus=CPUS, memory_mib=MEMORY_MIB,
                            secgroups=["bench"], ssh_keys=[self.key], cold=cold)  # fmt: skip
        net = self.c.network("default")  # made by the first launch
        if not self.rule_made:  # the probe comes from the network's gateway
            self.c.add_rule("bench", "tcp/22", from_cidr=f"{net['gateway']}/32")
            self.rule_made = True
        ip = next(i["ip"] for i in net["instances"] if i["name"] == name)
        t_ssh = wait_until(lambda: ssh_banner(net["namespace"], ip), started, "SSH")
        if self.login_key is not None:
            self.login_s = wait_until(lambda: self.logs_in(name), started, "SSH login")

        def run(argv: list[str]) -> tuple[int, str]:
            out = self.c.exec(name, argv, timeout=30)
            return out["exit_code"], out["stdout"].decode()

        t_done = wait_until(lambda: cloud_init_done(run), started, "cloud-init done")
        self.c.wait(res["operation"]["id"], timeout=LIMIT_S)
        return t_ssh, t_done, self.c.instance(name)

    def logs_in(self, name: str) -> bool:
        """Does `gureum ssh NAME -i KEY -- true` log in, as a user would?"""
        argv = [sys.executable, "-m", "gureum.cli.main", "ssh", name, "-i", str(self.login_key),
                "--", "true"]  # fmt: skip
        proc = subprocess.run(argv, env=self.svc.env, capture_output=True, timeout=60)
        return proc.returncode == 0

    def raw_run(self, inst: dict, work: Path) -> tuple[float, float]:
        """The same QEMU command line, run directly, on a fresh overlay of the image disk."""
        argv = Path(f"/proc/{inst['pid']}/cmdline").read_bytes().decode().split("\0")[:-1]
        old_run = self.svc.home / "run" / inst["id"]
        root_file = re.compile(r'"filename": "([^"]+)", "node-name": "root-file"')
        top = next(m.group(1) for a in argv if (m := root_file.search(a)))
        net = self.c.network("default")
        ip = next(i["ip"] for i in net["instances"] if i["name"] == inst["name"])
        self.c.wait(self.c.action(inst["name"], "stop")["id"], timeout=120)
        shutil.rmtree(work, ignore_errors=True)
        (work / "rt").mkdir(parents=True)
        new_top = work / "root.qcow2"
        folder = Path(self.image["path"])
        asyncio.run(create_overlay(folder / "disk.qcow2", new_top, inst["disk_gib"] * 2**30))
        fd = asyncio.run(tap.open_tap(net["namespace"], tap.tap_name(inst["id"], 0), "br0"))
        cmd = raw_argv(argv, old_run, work / "rt", Path(top), new_top, fd)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                pass_fds=(fd,), start_new_session=True)  # fmt: skip
        os.close(fd)
        try:
            t_ssh = wait_until(lambda: ssh_banner(net["namespace"], ip), started, "raw SSH")

            def run(argv: list[str]) -> tuple[int, str]:
                async def go() -> tuple[int, str]:
                    agent = GuestAgent(work / "rt" / "agent.sock")
                    try:
                        out = await agent.exec(argv, timeout=30)
                    finally:
                        await agent.close()
                    return out.exit_code, out.stdout.decode()

                return asyncio.run(go())

            t_done = wait_until(lambda: cloud_init_done(run), started, "raw cloud-init done")
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(work, ignore_errors=True)
        return t_ssh, t_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "os.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    keydir = Path(tempfile.mkdtemp(prefix="gureum-bench-key-"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "id")],
                   check=True)  # fmt: skip
    key = (keydir / "id.pub").read_text().strip()
    svc = Service(home, "auto")
    try:
        op = svc.client.build_image("debian")
        image = svc.client.wait(op["id"], timeout=1800)["result"]["image"]
        accel = svc.client.host()["accel"]
        svc.client.create_secgroup("bench")
        print(
            f"accel: {accel}; image debian {image['version']} (kernel "
            f"{image['kernel_version']}); {args.runs} runs each, {CPUS} vCPU, {MEMORY_MIB} MiB"
        )
        bench = Bench(svc, image, key)
        g_ssh, g_done, r_ssh, r_done = [], [], [], []
        analyze = ""
        for i in range(args.runs):
            name = f"os{i}"
            a, b, inst = bench.gureum_run(name)
            g_ssh.append(a)
            g_done.append(b)
            if i == 0:
                out = svc.client.exec(name, ["sh", "-c", "systemd-analyze; systemd-analyze blame "
                                             "| head -5"], timeout=60)  # fmt: skip
                analyze = out["stdout"].decode()
            c, d = bench.raw_run(inst, home / "raw")
            r_ssh.append(c)
            r_done.append(d)
            svc.client.delete(inst["id"], force=True)
            print(f"  run {i + 1}: gureum SSH {a:.1f} s, cloud-init done {b:.1f} s   "
                  f"raw QEMU SSH {c:.1f} s, cloud-init done {d:.1f} s")  # fmt: skip
        runs = {"g_ssh": g_ssh, "g_done": g_done, "r_ssh": r_ssh, "r_done": r_done}
        med = {k: statistics.median(v) for k, v in runs.items()}
        result = {
            "accel": accel,
            "runs": args.runs,
            "cpus": CPUS,
            "memory_mib": MEMORY_MIB,
            "gureum_ssh_median_s": round(med["g_ssh"], 2),
            "raw_ssh_median_s": round(med["r_ssh"], 2),
            "ssh_ratio": round(med["g_ssh"] / med["r_ssh"], 3),
            "gureum_cloud_init_done_median_s": round(med["g_done"], 2),
            "raw_cloud_init_done_median_s": round(med["r_done"], 2),
            "cloud_init_ratio": round(med["g_done"] / med["r_done"], 3),
            "gureum_ssh_s": [round(x, 2) for x in g_ssh],
            "raw_ssh_s": [round(x, 2) for x in r_ssh],
            "gureum_cloud_init_done_s": [round(x, 2) for x in g_done],
            "raw_cloud_init_done_s": [round(x, 2) for x in r_done],
            "systemd_analyze": analyze,
        }
        print(f"SSH answers: gureum {med['g_ssh']:.2f} s, raw QEMU {med['r_ssh']:.2f} s, "
              f"ratio {result['ssh_ratio']:.3f}")  # fmt: skip
        print(f"cloud-init done: gureum {med['g_done']:.2f} s, raw QEMU {med['r_done']:.2f} s, "
              f"ratio {result['cloud_init_ratio']:.3f}")  # fmt: skip
        print("systemd-analyze (first gureum boot):\n" + analyze)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        svc.discard()
        shutil.rmtree(keydir, ignore_errors=True)


if __name__ == "__main__":
    main()
