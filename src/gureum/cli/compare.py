"""`gureum compare IMAGE`: a VM and a container measured side by side (cli/comparison.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gureum.cli.comparison import Comparison, Settings, build_probe, chart, isolation_lines
from gureum.cli.instances import memory_in_mib
from gureum.cli.output import Format, OutputOpt, bold, err, out, print_json, table
from gureum.client.client import Client


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ratio(row: dict[str, Any]) -> str:
    ratio = row["ratio"]
    if not ratio:
        return "-"
    return f"x{ratio:.3g}"


def show(report: dict[str, Any]) -> None:
    settings = report["settings"]
    heading = f"gureum compare {report['image']}: a VM and a container, "
    out.print(bold(heading, f"{settings['cpus']} CPU, {settings['memory_mib']} MiB each"))
    out.print(f"accelerator: {report['accel']} ({report['accel_reason']}); "
              f"host kernel {report['host_kernel']}")  # fmt: skip
    table(
        ["MEASURE", "UNIT", "VM", "CONTAINER", "CONTAINER/VM", "BETTER"],
        [
            [
                r["measure"],
                r["unit"],
                _figure(r["vm"]),
                _figure(r["container"]),
                _ratio(r),
                r["better"],
            ]
            for r in report["rows"]
        ],
    )
    out.print()
    facts = [list(line) for line in isolation_lines(report["results"])]
    table(["ISOLATION", "VM", "CONTAINER"], facts)
    fit = report["results"]
    out.print(
        f"\nin the budget ({settings['budget_mib']} MiB of host memory): "
        f"VMs stopped by {fit['vm']['fit_stopped_by']}, "
        f"containers by {fit['container']['fit_stopped_by']}"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        image: Annotated[str, typer.Argument(help="Image to run both from, e.g. tiny or debian.")],
        cpus: Annotated[int, typer.Option(help="CPUs of each instance.")] = 1,
        memory: Annotated[str, typer.Option(help="Memory of each instance, e.g. 256M.")] = "256M",
        runs: Annotated[int, typer.Option(help="Launches of each kind timed (median).")] = 5,
        budget: Annotated[
            str, typer.Option(help="Host memory the 'how many fit' count fills, e.g. 1G.")
        ] = "1G",
        max_fit: Annotated[
            int, typer.Option("--max-fit", help="The most of each kind that count launches.")
        ] = 32,
        panic: Annotated[
            bool,
            typer.Option(help="At the end, crash one instance's kernel from inside (or try)."),
        ] = True,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Also write the report as JSON here.")
        ] = None,
        chart_out: Annotated[
            Path | None, typer.Option("--chart", help="Also draw the table as a PNG here.")
        ] = None,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Launch VMs and system containers from one image, with the same CPU and memory, on
        this host, and measure both in one run: launch to ready, stop, host memory, how many
        fit in a memory budget, CPU, system calls, disk, network, and isolation as each system
        reports it (docs/compare.md). Instances are named cmp-*; all are deleted at the end.
        Takes minutes (a VM's boot is slow on TCG). Run it where the service runs, as root,
        for host memory as PSS."""
        if runs < 2 or max_fit < 1:
            raise typer.BadParameter("--runs must be at least 2 and --max-fit at least 1")
        settings = Settings(
            image=image,
            cpus=cpus,
            memory_mib=memory_in_mib(memory),
            runs=runs,
            budget_mib=memory_in_mib(budget),
            max_fit=max_fit,
            panic=panic,
        )
        probe = build_probe(Path.home() / ".cache" / "gureum")
        with Client() as client:
            client.image(image)  # a missing image fails here, before anything is launched
            say = (lambda line: err.print(line)) if fmt == Format.table else (lambda _: None)
            report = Comparison(client, settings, say, probe).run()
        if json_out is not None:
            json_out.write_text(json.dumps(report, indent=2) + "\n")
        if chart_out is not None:
            chart(report, chart_out)
        if fmt == Format.json:
            print_json(report)
        else:
            show(report)
