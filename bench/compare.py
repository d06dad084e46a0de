"""VM against container benchmark: `gureum compare` (src/gureum/cli/comparison.py) on a fresh
service of its own, the VM the baseline and the container measured against it in the same run:
launch to ready and stop (median of --runs), host memory per idle instance (PSS), how many of
each fit in a memory budget (launched until the budget, a refusal or --max-fit), a CPU job,
getppid() cost, disk and TCP figures from the same probe in both, and isolation facts.

Prints the table with each container/VM ratio, checks the issue's two targets (a `tiny`
container ready in at most 300 ms; its host memory at most a tenth of the VM's), and writes the
report as JSON and a chart.

    python bench/compare.py [--image tiny] [--runs 5] [--memory-mib 256] [--budget-mib 1024]
                            [--max-fit 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from launch import Service  # noqa: E402

from gureum.cli.compare import show  # noqa: E402
from gureum.cli.comparison import Comparison, Settings, build_probe, chart  # noqa: E402

READY_TARGET_S = 0.300
MEMORY_TARGET = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-mib", type=int, default=256, help="each instance's memory")
    parser.add_argument("--budget-mib", type=int, default=1024)
    parser.add_argument("--max-fit", type=int, default=32)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "compare.json")
    parser.add_argument("--chart", type=Path, default=REPO / "bench" / "results" / "compare.png")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gureum-bench-", dir="/tmp"))
    # The count is of what fits in host memory: admission's default CPU over-commit (4 vCPUs a
    # core) would refuse a ninth 1-vCPU instance on a 2-core host first.
    os.environ["GUREUM_CPU_OVERCOMMIT"] = str(max(4, args.max_fit))
    svc = Service(home, "auto")
    try:
        op = svc.client.build_image(args.image)
        svc.client.wait(op["id"], timeout=1800)
        settings = Settings(
            image=args.image,
            memory_mib=args.memory_mib,
            runs=args.runs,
            budget_mib=args.budget_mib,
            max_fit=args.max_fit,
        )
        probe = build_probe(home / "probe")
        report = Comparison(svc.client, settings, lambda line: print(f"  {line}"), probe).run()
    finally:
        svc.discard()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    chart(report, args.chart)
    show(report)
    rows = {r["measure"]: r for r in report["rows"]}
    ready = rows["launch to ready (median)"]
    memory = rows["host memory, idle"]
    print(f"\ncontainer launch to ready: {ready['container'] * 1000:.0f} ms "
          f"(x{ready['ratio']:.3f} of the VM's {ready['vm']:.2f} s; target <= "
          f"{READY_TARGET_S * 1000:.0f} ms for tiny)")  # fmt: skip
    print(f"container host memory: {memory['container']:.1f} MiB (x{memory['ratio']:.4f} of the "
          f"VM's {memory['vm']:.1f} MiB; target <= x{MEMORY_TARGET})")  # fmt: skip
    print(f"written: {args.json}, {args.chart}")
    if args.image == "tiny":
        met = ready["container"] <= READY_TARGET_S and memory["ratio"] <= MEMORY_TARGET
        print("targets met" if met else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
