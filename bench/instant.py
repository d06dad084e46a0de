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

    python bench/instant.py [--runs 10] [--clones 20] [--json out.json]
"""

from __future__ import annotations

import argparse
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

CPUS, MEMORY_MIB = 1, 256


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


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


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clones", type=int, default=20)
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
        for what, timeline in (("clone", timelines[-1]), ("pooled clone", pool_timelines[-1])):
            print(f"last {what}'s timeline:")
            for phase in timeline["phases"]:
                if phase["at"] is not None:
                    since = (phase["since_previous_s"] or 0) * 1000
                    print(f"  {phase['event']:<18} +{since:7.1f} ms")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    finally:
        svc.discard()


if __name__ == "__main__":
    main()
