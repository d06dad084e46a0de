"""Instant-launch benchmark: launches of `tiny` cloned from its template against cold launches of
the same image and shape, in one run, and host memory per clone.

- launch-to-running: from the API request until the guest's vCPUs run (a clone: its memory
  restored; a cold launch: its QEMU started, which then runs at once);
- launch-to-ready: until the launch operation ends (the guest agent answers; for a clone, its
  identity refreshed too);
- memory: the proportional set size (PSS: shared pages split among their users) of each QEMU,
  for 1, 10 and 20 clones of one template, against one cold-booted VM, each idle 3 s.

A clone is measured twice: taken from the pool of waiting QEMUs (size 1, filled again before
each run, as it is between launches that are not back to back) and without it (size 0: the clone
starts its own QEMU). Runs alternate (pooled clone, clone, cold), so drift on the machine hits
all alike.

Then, with ``--debian-runs`` (5 by default; 0: none), the same for `debian` (2 vCPUs, 1 GiB):
a template made, then launches cloned from it and cold launches alternating, each timed to
the SSH banner (asked from inside the network's namespace), to a login with the instance's key
(`gureum ssh NAME -i KEY -- true`, as a user would) and to `cloud-init status: done`
(bench/os.py's probes). A clone runs cloud-init again as its own instance.

    python bench/instant.py [--runs 10] [--clones 20] [--debian-runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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

from gureum.sys.procs import pss_bytes  # noqa: E402

# bench/os.py (named like the standard library's module: loaded by path)
_spec = importlib.util.spec_from_file_location("bench_os", REPO / "bench" / "os.py")
assert _spec is not None and _spec.loader is not None
bench_os = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_os)

CPUS, MEMORY_MIB = 1, 256


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def phase_at(inst: dict, event: str) -> float | None:
    for phase in inst["boot"]["phases"]:
        if phase["event"] == event:
            return phase["at"]  # type: ignore[no-any-return]
    return None


def pool(svc: Service, size: int) -> None:
    """Set the pool's size and wait until it holds that many waiting QEMUs."""
    svc.client.resize_pool(size)
    deadline = time.monotonic() + 120
    while (info := svc.client.pool())["waiting"] != size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not reach {size}: {info}")
        time.sleep(0.05)


def launch(svc: Service, name: str, *, cold: bool) -> tuple[float, float, dict]:
    """(launch-to-running, launch-to-ready, the instance) of one launch with one NIC."""
    requested = time.time()
    started = time.perf_counter()
    res = svc.client.launch(name, "tiny", cpus=CPUS, memory_mib=MEMORY_MIB, cold=cold)
    op = svc.client.wait(res["operation"]["id"], timeout=600)
    ready = time.perf_counter() - started
    inst = op["result"]["instance"]
    ran = phase_at(inst, "running")
    assert ran is not None, inst["boot"]
    assert (inst["template_id"] is None) == cold, inst
    NETWORK_UP.append(network_up(svc, inst["id"]) - requested)
    return ran - requested, ready, inst


NETWORK_UP: list[float] = []  # each launch's launch-to-network-up, in order


def network_up(svc: Service, instance_id: str) -> float:
    """When the guest configured its DHCP lease (a clone asks in the background, after it is
    ready; a cold boot before)."""
    deadline = time.monotonic() + 30
    while (at := phase_at(svc.client.instance(instance_id), "network_up")) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{instance_id} never said its network is up")
        time.sleep(0.01)
    return at


def print_timeline(what: str, timeline: dict) -> None:
    print(f"last {what}'s timeline:")
    for phase in timeline["phases"]:
        if phase["at"] is not None:
            since = (phase["since_previous_s"] or 0) * 1000
            print(f"  {phase['event']:<18} +{since:7.1f} ms")


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def debian(svc: Service, runs: int, home: Path) -> dict:
    """Launch-to-SSH and to cloud-init done of `debian` cloned from its template, against cold
    launches, alternating."""
    keydir = home / "key"
    keydir.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "id")],
                   check=True)  # fmt: skip
    image = svc.client.wait(svc.client.build_image("debian")["id"], timeout=1800)["result"]["image"]
    svc.client.create_secgroup("bench")
    made = time.perf_counter()
    op = svc.client.template_image("debian", bench_os.CPUS, bench_os.MEMORY_MIB, 1)
    tpl = svc.client.wait(op["id"], timeout=1800)["result"]["template"]
    print(f"debian {image['version']}: template {tpl['id']} made in "
          f"{time.perf_counter() - made:.1f} s; {runs} runs each")  # fmt: skip
    bench = bench_os.Bench(svc, image, (keydir / "id.pub").read_text().strip())
    bench.login_key = keydir / "id"
    clone_ssh, clone_login, clone_done, cold_ssh, cold_login, cold_done = [], [], [], [], [], []
    for i in range(runs):
        a, b, inst = bench.gureum_run(f"dclone{i}")
        assert inst["template_id"] == tpl["id"], inst
        clone_timeline = inst["boot"]
        assert bench.login_s is not None
        clone_login.append(bench.login_s)
        svc.client.delete(inst["id"], force=True)
        c, d, inst = bench.gureum_run(f"dcold{i}", cold=True)
        assert inst["template_id"] is None, inst
        cold_login.append(bench.login_s)
        svc.client.delete(inst["id"], force=True)
        clone_ssh.append(a)
        clone_done.append(b)
        cold_ssh.append(c)
        cold_done.append(d)
        print(f"  run {i + 1}: clone SSH {a:.1f} s, login {clone_login[-1]:.1f} s, cloud-init "
              f"done {b:.1f} s   cold SSH {c:.1f} s, login {cold_login[-1]:.1f} s, cloud-init "
              f"done {d:.1f} s")  # fmt: skip
    print_timeline("debian clone", clone_timeline)
    print(f"  (its SSH banner {clone_ssh[-1]:.2f} s and a login {clone_login[-1]:.2f} s after the "
          "launch was asked)")  # fmt: skip
    med = {k: statistics.median(v) for k, v in
           {"clone_ssh": clone_ssh, "clone_done": clone_done, "cold_ssh": cold_ssh,
            "cold_done": cold_done, "clone_login": clone_login,
            "cold_login": cold_login}.items()}  # fmt: skip
    out = {
        "runs": runs,
        "clone_launch_to_ssh_median_s": round(med["clone_ssh"], 2),
        "cold_launch_to_ssh_median_s": round(med["cold_ssh"], 2),
        "ssh_ratio_clone_over_cold": round(med["clone_ssh"] / med["cold_ssh"], 3),
        "clone_launch_to_login_median_s": round(med["clone_login"], 2),
        "cold_launch_to_login_median_s": round(med["cold_login"], 2),
        "login_ratio_clone_over_cold": round(med["clone_login"] / med["cold_login"], 3),
        "clone_cloud_init_done_median_s": round(med["clone_done"], 2),
        "cold_cloud_init_done_median_s": round(med["cold_done"], 2),
        "last_clone_timeline": clone_timeline,
        "clone_ssh_s": [round(x, 2) for x in clone_ssh],
        "cold_ssh_s": [round(x, 2) for x in cold_ssh],
    }
    print(f"debian launch-to-SSH median: clone {med['clone_ssh']:.2f} s, cold "
          f"{med['cold_ssh']:.2f} s, ratio {out['ssh_ratio_clone_over_cold']}; to a login: "
          f"clone {med['clone_login']:.2f} s, cold {med['cold_login']:.2f} s, ratio "
          f"{out['login_ratio_clone_over_cold']}; cloud-init done: "
          f"clone {med['clone_done']:.2f} s, cold {med['cold_done']:.2f} s")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clones", type=int, default=20)
    parser.add_argument("--debian-runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "instant.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    # 20 idle 1-vCPU clones on a 2-CPU host: more than admission's default over-commit (4).
    os.environ["GUREUM_CPU_OVERCOMMIT"] = str(max(4, args.clones))
    svc = Service(home, "auto")
    try:
        image = svc.build()
        accel = svc.client.host()["accel"]
        made = time.perf_counter()
        op = svc.client.template_image("tiny", CPUS, MEMORY_MIB, 1)
        tpl = svc.client.wait(op["id"], timeout=600)["result"]["template"]
        print(f"accel: {accel}; tiny {image['version']}; template {tpl['id']} made in "
              f"{time.perf_counter() - made:.1f} s; {args.runs} runs each, {CPUS} vCPU, "
              f"{MEMORY_MIB} MiB, 1 NIC")  # fmt: skip
        pool_net, clone_net, cold_net = [], [], []
        pool_run, pool_ready, pool_timelines = [], [], []
        clone_run, clone_ready, cold_run, cold_ready, timelines = [], [], [], [], []
        for i in range(args.runs):
            pool(svc, 1)
            p_run, p_ready, inst = launch(svc, f"pooled{i}", cold=False)
            assert inst["boot"]["phases"][0]["at"] is not None, inst["boot"]  # taken_from_pool
            pool_run.append(p_run)
            pool_ready.append(p_ready)
            pool_timelines.append(inst["boot"])
            pool_net.append(NETWORK_UP[-1])
            svc.client.delete(inst["id"], force=True)
            pool(svc, 0)
            run, ready, inst = launch(svc, f"clone{i}", cold=False)
            clone_run.append(run)
            clone_ready.append(ready)
            timelines.append(inst["boot"])
            clone_net.append(NETWORK_UP[-1])
            svc.client.delete(inst["id"], force=True)
            c_run, c_ready, inst = launch(svc, f"cold{i}", cold=True)
            cold_run.append(c_run)
            cold_ready.append(c_ready)
            cold_net.append(NETWORK_UP[-1])
            svc.client.delete(inst["id"], force=True)
            print(
                f"  run {i + 1}: pooled clone running {p_run * 1000:.0f} ms, ready "
                f"{p_ready * 1000:.0f} ms   clone running {run * 1000:.0f} ms, ready "
                f"{ready * 1000:.0f} ms   cold running {c_run * 1000:.0f} ms, ready "
                f"{c_ready * 1000:.0f} ms"
            )
        pool(svc, 1)
        waiting_rss = [
            rss_mib(int(pid))
            for pid in (svc.home / "run").glob("*/qemu.pid")
            for pid in [pid.read_text().strip()]
        ]
        pool(svc, 0)

        _, _, cold = launch(svc, "cold-mem", cold=True)
        time.sleep(3)
        cold_pss = pss_bytes(cold["pid"])
        svc.client.delete(cold["id"], force=True)
        pss: dict[int, float] = {}
        pids = []
        for i in range(args.clones):
            pids.append(launch(svc, f"many{i}", cold=False)[2]["pid"])
            if len(pids) in (1, 10, args.clones):
                time.sleep(3)
                pss[len(pids)] = sum(pss_bytes(p) for p in pids) / len(pids)
        for inst in svc.client.instances():
            svc.client.delete(inst["id"], force=True)
        svc.client.remove_templates("tiny")  # and the templates project's network with it

        result = {
            "accel": accel,
            "runs": args.runs,
            "pooled_clone_launch_to_running_ms_median": ms(pool_run),
            "pooled_clone_launch_to_ready_ms_median": ms(pool_ready),
            "pooled_ready_ratio_over_cold": round(
                statistics.median(pool_ready) / statistics.median(cold_ready), 3
            ),
            "waiting_qemu_rss_mib": waiting_rss,
            "pooled_clone_launch_to_network_up_ms_median": ms(pool_net),
            "clone_launch_to_network_up_ms_median": ms(clone_net),
            "cold_launch_to_network_up_ms_median": ms(cold_net),
            "clone_launch_to_running_ms_median": ms(clone_run),
            "clone_launch_to_ready_ms_median": ms(clone_ready),
            "cold_launch_to_running_ms_median": ms(cold_run),
            "cold_launch_to_ready_ms_median": ms(cold_ready),
            "ready_ratio_clone_over_cold": round(
                statistics.median(clone_ready) / statistics.median(cold_ready), 3
            ),
            "clone_ready_ms": [round(x * 1000, 1) for x in clone_ready],
            "cold_ready_ms": [round(x * 1000, 1) for x in cold_ready],
            "cold_vm_pss_mib": round(cold_pss / 2**20, 1),
            "clone_pss_mib_per_clone": {n: round(v / 2**20, 1) for n, v in pss.items()},
            "pooled_ready_ms": [round(x * 1000, 1) for x in pool_ready],
            "last_clone_timeline": timelines[-1],
            "last_pooled_clone_timeline": pool_timelines[-1],
        }
        print(f"launch-to-running median: pooled clone "
              f"{result['pooled_clone_launch_to_running_ms_median']} ms, clone "
              f"{result['clone_launch_to_running_ms_median']} ms, cold "
              f"{result['cold_launch_to_running_ms_median']} ms")  # fmt: skip
        print(f"launch-to-ready median: pooled clone "
              f"{result['pooled_clone_launch_to_ready_ms_median']} ms, ratio "
              f"{result['pooled_ready_ratio_over_cold']} of cold")  # fmt: skip
        print(f"a waiting QEMU's RSS: {waiting_rss} MiB")
        print(f"launch-to-network-up median: pooled clone "
              f"{result['pooled_clone_launch_to_network_up_ms_median']} ms, clone "
              f"{result['clone_launch_to_network_up_ms_median']} ms, cold "
              f"{result['cold_launch_to_network_up_ms_median']} ms")  # fmt: skip
        print(f"launch-to-ready median: clone {result['clone_launch_to_ready_ms_median']} ms, "
              f"cold {result['cold_launch_to_ready_ms_median']} ms, ratio "
              f"{result['ready_ratio_clone_over_cold']}")  # fmt: skip
        per_clone = ", ".join(f"{n}: {v} MiB" for n, v in result["clone_pss_mib_per_clone"].items())
        print(f"PSS per clone ({per_clone}) vs a cold VM {result['cold_vm_pss_mib']} MiB")
        print_timeline("clone", timelines[-1])
        print_timeline("pooled clone", pool_timelines[-1])
        if args.debian_runs:
            result["debian"] = debian(svc, args.debian_runs, home)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        svc.discard()


if __name__ == "__main__":
    main()
