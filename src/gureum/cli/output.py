"""How the CLI shows things: rich tables for people, JSON for scripts, progress on long work.

Everything printed is plain text: rich's markup and emoji codes are off on both consoles, since
what is printed is mostly data from the service (names, messages, fingerprints, checksums) and
a fingerprint's ``:AB:`` became an emoji, a ``[red]`` in a message a style. The few headings
that are bold say so with ``bold()``, which styles its text without reading it.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

from gureum.client.client import Client
from gureum.errors import InvalidInput
from gureum.units import format_size, parse_duration, parse_size

# How wide a console is when it does not write to a terminal: wider than anything it prints.
UNBOUNDED = 1 << 20


class _Console(Console):
    """As wide as the terminal it writes to; when its stream is not a terminal (a pipe, a file),
    as wide as what it prints: a script reading it gets every line and every table cell whole,
    never wrapped at 80 columns nor cut with an ellipsis (rich's default there)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]  # a property's getter
        return size if self.is_terminal else ConsoleDimensions(UNBOUNDED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # a property's setter


out = _Console(highlight=False, markup=False, emoji=False)
err = _Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def bold(heading: str, rest: str = "", style: str = "bold") -> Text:
    """``heading`` styled, then ``rest``: both taken as they are, never as markup."""
    return Text.assemble((heading, style), rest)


class Format(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Format, typer.Option("-o", "--output", help="Output format: a table for people, or json.")
]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(columns: list[str], rows: list[list[str]]) -> None:
    """Columns aligned, the header bold; no line ends in spaces (rich pads every cell, the last
    column's too, to the column's width)."""
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    for segments in out.render_lines(t, pad=False):
        line = Text()
        for segment in segments:
            if not segment.control:
                line.append(segment.text, segment.style)
        line.rstrip()
        out.print(line, soft_wrap=True)  # already laid out to the console's width


P = ParamSpec("P")
T = TypeVar("T")


def usage_error(message: str) -> InvalidInput:
    """A value on the command line that the CLI refuses itself, before sending anything (a size
    such as 2X, an ``--unset`` of no bound, a file that is not there): a usage error, exit 2
    with ``[usage]``, as click's own are (docs/cli.md)."""
    return InvalidInput(message, code="usage")


def option_value(parse: Callable[P, T]) -> Callable[P, T]:
    """``parse``, reading a value of the command line: what it refuses is a usage error."""

    @functools.wraps(parse)
    def read(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return parse(*args, **kwargs)
        except InvalidInput as exc:
            raise usage_error(exc.message) from exc

    return read


# A size (512M, 2G) or a duration (12h, 30d) given on the command line.
read_size = option_value(parse_size)
read_duration = option_value(parse_duration)


def call(method: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """One request: ``method`` (of Client) called on a client opened for it, and closed after.
    Commands that make several requests open one Client for them all instead."""
    with Client() as client:
        return method(client, *args, **kwargs)


Human = str | Text | Callable[[], object]


def emit(data: Any, fmt: Format, human: Human) -> None:
    """The one way a command prints what it got: with ``-o json`` the data as it is, else
    ``human``: a line, or a function that prints more than one."""
    if fmt == Format.json:
        print_json(data)
    elif callable(human):
        human()
    else:
        out.print(human)


def listing(
    items: list[dict[str, Any]],
    fmt: Format,
    columns: list[str],
    row: Callable[[dict[str, Any]], list[str]],
    *,
    empty: str | None = None,
) -> None:
    """A list the API answered: with ``-o json`` as it is, else a table of one row an item
    (or, when there is none and ``empty`` says what to do, that on stderr)."""
    if fmt == Format.table and not items and empty:
        err.print(empty)
    else:
        emit(items, fmt, lambda: table(columns, [row(i) for i in items]))


def lines(*said: Text | str) -> Callable[[], None]:
    """Lines to print later (a heading, say, and indented details): the human form of an
    answer that takes more than one line."""

    def show() -> None:
        for line in said:
            out.print(line)

    return show


def age(ts: float | None) -> str:
    return duration(time.time() - ts) if ts else "-"


def duration(seconds: float) -> str:
    """Short human form, in its largest whole unit: 3d, 5h, 12m, 40s."""
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


INSTANCE_COLUMNS = [
    "NAME",
    "TYPE",
    "STATE",
    "IPV4",
    "IMAGE",
    "CPUS",
    "MEMORY",
    "DISK",
    "ACCEL",
    "PID",
    "AGE",
]


def instance_row(i: dict[str, Any]) -> list[str]:
    return [
        i["name"],
        i.get("type") or "vm",
        i["state"],
        ", ".join(n["ip"] for n in i.get("nics") or [] if n.get("ip")) or "-",
        i["image"],
        str(i["cpus"]),
        format_size(i["memory_mib"] * 1024 * 1024),
        format_size(i["disk_bytes"]),
        i["accel"] or "-",
        str(i["pid"] or "-"),
        age(i["created_at"]),
    ]


def boot_lines(boot: dict[str, Any]) -> list[str]:
    lines = []
    start = None
    for phase in boot["phases"]:
        if phase["at"] is None:
            continue
        start = start if start is not None else phase["at"]
        step = phase["since_previous_s"]
        lines.append(
            f"  {phase['event']:<16} +{phase['at'] - start:6.2f} s"
            + (f"  ({step:.2f} s)" if step is not None else "")
        )
    return lines


def _next_boot(i: dict[str, Any], key: str, unit: str) -> str:
    """What a resize gives the guest at its next boot, beside what it has now."""
    pending = (i.get("pending_next_boot") or {}).get(key)
    return f" ({pending}{unit} at the next boot)" if pending is not None else ""


def _placed(placement: dict[str, Any]) -> str:
    group = placement.get("spread_group")
    return (placement.get("host") or "-") + (f" (spread group {group})" if group else "")


def instance_detail(i: dict[str, Any]) -> None:
    host = i.get("host") or {}
    pairs = [
        ("Name", i["name"]),
        ("ID", i["id"]),
        ("Project", i.get("project") or "-"),
        ("Type", i.get("type") or "vm"),
        ("State", i["state"] + (f" ({i['state_reason']})" if i.get("state_reason") else "")),
        ("Image", f"{i['image']} ({i['image_version']})"),
        ("Launched", f"from template {i['template_id']}" if i.get("template_id") else "booted"),
        ("CPUs", str(i["cpus"]) + _next_boot(i, "cpus", "")),
        ("Memory", f"{i['memory_mib']} MiB" + _next_boot(i, "memory_mib", " MiB")),
        ("Disk", f"{i['disk_gib']:g} GiB"),
        ("Accel", i["accel"] or "-"),
        ("Host", _placed(i.get("placement") or {})),
        ("PID", str(i["pid"] or "-")),
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["created_at"]))),
    ]
    if host.get("rss_bytes"):
        pairs.append(("QEMU RSS", format_size(host["rss_bytes"])))
    if host.get("disk_allocated_bytes") is not None:
        pairs.append(("Disk used", format_size(host["disk_allocated_bytes"]) + " (overlay)"))
    for nic in i.get("nics") or []:
        pairs.append((f"NIC {nic['slot']}", f"{nic['network']} {nic['ip'] or '-'} ({nic['mac']})"))
    if i.get("secgroups"):
        pairs.append(("Groups", ", ".join(i["secgroups"])))
    for fwd in i.get("forwards") or []:
        pairs.append(("Forward", f"{fwd['host']} -> {fwd['guest']}"))
    for key, value in pairs:
        out.print(bold(f"{key + ':':<11}", f" {value}"))
    lines = boot_lines(i["boot"])
    if lines:
        total = i["boot"]["total_s"]
        out.print(bold("Boot:", "" if total is None else f"       ready in {total:.2f} s"))
        for line in lines:
            out.print(line)


def follow(client: Client, op: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Print an operation's progress as it happens; return it finished (raise if it failed)."""

    def show(line: dict[str, Any]) -> None:
        if not quiet:
            frac = line.get("fraction")
            pct = f"[{frac * 100:3.0f}%] " if frac is not None else ""
            err.print(f"  {pct}{line['message']}")

    return client.wait(op["id"], on_progress=show)
