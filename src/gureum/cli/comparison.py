"""`gureum compare IMAGE`: a VM and a container from the same image, the same CPU and memory
limits, on the same host, measured in one run through the API (docs/compare.md says what each
row means).

Every figure inside an instance is taken by the same program in both (``probe.c``: a static
binary with no libc, compiled here and handed in through `exec`), so that the two differ only in
what runs them. Launches alternate (VM, container, VM, ...), so drift on the machine hits both.

Host memory (PSS) is read from the host's /proc where this runs on the service's host (as
root): a VM's is its QEMU's, a container's the sum over every process in its pid namespace.
Elsewhere the service's figure (RSS) is used, and the table says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gureum.client.client import ApiError, Client
from gureum.engine.container.bundle import DENIED_SYSCALLS
from gureum.images.build import CC_ARGV
from gureum.sys.procs import pss_bytes

KINDS = ("vm", "container")
PROBE_SOURCE = Path(__file__).with_name("probe.c")
PROBE_IN_GUEST = "/tmp/gureum-probe"
DISK_FILE = "/var/tmp/gureum-probe.dat"  # on the root filesystem, in both
PORT = 5201
# What refusing another instance looks like: the host's capacity or the project's quota.
REFUSED = ("insufficient-capacity", "quota-exceeded")


@dataclass(frozen=True)
class Settings:
    image: str
    cpus: int = 1
    memory_mib: int = 256
    runs: int = 5  # launches of each kind timed (median)
    budget_mib: int = 1024  # host memory the "how many fit" count fills
    max_fit: int = 32  # the most of each kind that count launches
    cpu_rounds: int = 200_000  # rounds of probe's integer job
    syscalls: int = 200_000
    disk_mib: int = 64
    net_mib: int = 64
    trips: int = 500
    panic: bool = True  # crash one instance's kernel (or try to) at the end
    prefix: str = "cmp"
    timeout_s: float = 900.0  # one launch, at most


@dataclass
class Kind:
    """What was measured of one kind."""

    launch_s: list[float] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    memory_bytes: int | None = None
    memory_how: str = ""
    fit: int = 0
    fit_stopped_by: str = ""
    cpu_s: float | None = None
    syscall_ns: float | None = None
    disk: dict[str, float | None] = field(default_factory=dict)
    net: dict[str, float | None] = field(default_factory=dict)
    isolation: dict[str, Any] = field(default_factory=dict)


def build_probe(cache: Path) -> bytes:
    """probe.c compiled as the image builder compiles its own (no libc, static); cached by
    the source's contents."""
    source = PROBE_SOURCE.read_bytes()
    binary = cache / f"probe-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "probe"
            try:
                subprocess.run(
                    [*CC_ARGV, "-O2", "-o", str(out), str(PROBE_SOURCE)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            except FileNotFoundError:
                raise SystemExit("compare needs a C compiler (cc) on this machine") from None
            except subprocess.CalledProcessError as exc:
                raise SystemExit(f"cannot build the probe: {exc.stderr.strip()[:500]}") from None
            out.replace(binary)
    return binary.read_bytes()


def pss_by_pid_namespace() -> dict[str, int]:
    """The PSS of every process on this host, summed by pid namespace (one pass over /proc)."""
    sums: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                namespace = os.readlink(f"/proc/{entry}/ns/pid")
                sums[namespace] = sums.get(namespace, 0) + pss_bytes(int(entry))
    return sums


def host_memory(
    inst: dict[str, Any], by_namespace: dict[str, int] | None = None
) -> tuple[int | None, str]:
    """(bytes, how measured) of one running instance on this host: PSS when /proc shows its
    processes (a container's: every process in its pid namespace, from ``by_namespace`` when
    given), else the service's RSS."""
    pid = inst.get("pid")
    try:
        if not pid:
            raise OSError("no pid")
        if inst.get("type") != "container":
            return pss_bytes(pid), "PSS"
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        sums = by_namespace if by_namespace is not None else pss_by_pid_namespace()
        return sums.get(namespace, 0), "PSS"
    except OSError:
        return inst.get("host", {}).get("rss_bytes"), "RSS (the service's)"


class Comparison:
    def __init__(
        self, client: Client, settings: Settings, say: Callable[[str], None], probe: bytes
    ) -> None:
        self.client = client
        self.s = settings
        self.say = say
        self.probe = probe
        self.results = {kind: Kind() for kind in KINDS}
        self._made: set[str] = set()

    # -- instances -------------------------------------------------------------------------------
    def _name(self, kind: str, tag: str) -> str:
        return f"{self.s.prefix}-{'ct' if kind == 'container' else 'vm'}-{tag}"

    def launch(self, kind: str, name: str) -> tuple[float, dict[str, Any]]:
        """Launch and wait until ready; (seconds from the request, the instance)."""
        started = time.monotonic()
        res = self.client.launch(
            name, self.s.image, cpus=self.s.cpus, memory_mib=self.s.memory_mib,
            container=kind == "container", cold=True,
        )  # fmt: skip
        self._made.add(name)
        op = self.client.wait(res["operation"]["id"], timeout=self.s.timeout_s)
        return time.monotonic() - started, op["result"]["instance"]

    def stop(self, name: str) -> float:
        started = time.monotonic()
        self.client.wait(self.client.action(name, "stop")["id"], timeout=self.s.timeout_s)
        return time.monotonic() - started

    def delete(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.client.delete(name, force=True)
        self._made.discard(name)

    def cleanup(self) -> None:
        for name in list(self._made):
            self.delete(name)

    def run_in(self, name: str, *argv: str, timeout: float = 600) -> dict[str, Any]:
        res = self.client.exec(name, list(argv), timeout=timeout)
        if res["exit_code"] != 0:
            said = (res["stderr"] or res["stdout"]).decode(errors="replace").strip()[:300]
            raise RuntimeError(f"{' '.join(argv)} in {name}: exit {res['exit_code']}: {said}")
        return res

    def probe_in(self, name: str, *args: str, timeout: float = 600) -> dict[str, int]:
        """The probe's figures: what the instance printed, read strictly (a line that is not
        "name integer" is left out, and a figure a caller needs that is missing fails it)."""
        out = self.run_in(name, PROBE_IN_GUEST, *args, timeout=timeout)["stdout"]
        figures = {}
        for line in out.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isidentifier() and parts[1].isdigit():
                figures[parts[0]] = int(parts[1])
        return figures

    def put_probe(self, name: str) -> None:
        script = f"cat > {PROBE_IN_GUEST} && chmod 755 {PROBE_IN_GUEST} && mkdir -p /var/tmp"
        res = self.client.exec(name, ["sh", "-c", script], stdin=self.probe, timeout=60)
        if res["exit_code"] != 0:
            raise RuntimeError(f"cannot copy the probe into {name}: {res['stderr']!r}")

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            pairs = self._launches()
            for kind in KINDS:
                self._inside(kind, *pairs[kind])
            if self.s.panic:
                for kind in KINDS:
                    self._panic(kind, *pairs[kind])
            for kind in KINDS:  # gone before the count, which starts from an empty host
                victim, bystander = pairs[kind]
                self.results[kind].stop_s.append(self.stop(bystander))
                self.delete(victim)
                self.delete(bystander)
            for kind in KINDS:
                self._fit(kind)
        finally:
            self.cleanup()
        return self.report()

    def _launches(self) -> dict[str, tuple[str, str]]:
        """``runs`` launches of each kind, alternating; all but two of each stopped (timed) and
        deleted as they come; the two kept run the measurements inside."""
        kept: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for i in range(self.s.runs):
            for kind in KINDS:
                name = self._name(kind, str(i))
                took, _ = self.launch(kind, name)
                self.results[kind].launch_s.append(took)
                self.say(f"{kind} launch {i + 1}/{self.s.runs}: ready in {took:.2f} s")
                if len(kept[kind]) < 2:
                    kept[kind].append(name)
                else:
                    self.results[kind].stop_s.append(self.stop(name))
                    self.delete(name)
        return {kind: (names[0], names[1]) for kind, names in kept.items()}

    def _inside(self, kind: str, a: str, b: str) -> None:
        r = self.results[kind]
        time.sleep(3)  # idle a moment: the memory of an instance at rest
        r.memory_bytes, r.memory_how = host_memory(self.client.instance(a))
        for name in (a, b):
            self.put_probe(name)
        self.say(f"{kind}: CPU job")
        r.cpu_s = _per(self.probe_in(a, "cpu", str(self.s.cpu_rounds)), "ns", 1e9)
        self.say(f"{kind}: {self.s.syscalls} system calls")
        r.syscall_ns = _per(
            self.probe_in(a, "syscall", str(self.s.syscalls)), "ns", self.s.syscalls
        )
        self.say(f"{kind}: disk")
        d = self.probe_in(a, "disk", DISK_FILE, str(self.s.disk_mib))
        mib = self.s.disk_mib
        r.disk = {
            "write_mb_s": _rate(mib * 1.048576, d.get("write_ns")),
            "read_mb_s": _rate(d.get("read_bytes", 0) / 1e6, d.get("read_ns")),
            "randwrite_iops": _rate(d.get("random_ops", 0), d.get("randwrite_ns")),
            "randread_iops": _rate(d.get("random_ops", 0), d.get("randread_ns")),
            "direct_reads": bool(d.get("direct")),
        }
        self.say(f"{kind}: network")
        r.net = self._network(a, b)
        r.isolation = self._isolation(kind, a)

    def _network(self, server: str, client: str) -> dict[str, float | None]:
        ip = self.client.instance(server)["nics"][0]["ip"]
        served: dict[str, Any] = {}

        def serve() -> None:
            with Client(self.client.endpoint) as own:
                try:
                    served["res"] = own.exec(server, [PROBE_IN_GUEST, "serve", str(PORT)],
                                             timeout=600)  # fmt: skip
                except ApiError as exc:
                    served["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        out: dict[str, int] = {}
        for _attempt in range(50):  # until its server listens
            try:
                out = self.probe_in(
                    client, "client", ip, str(PORT), str(self.s.trips), str(self.s.net_mib)
                )
                break
            except RuntimeError:
                time.sleep(0.2)
        thread.join(60)
        if not out:
            raise RuntimeError(f"no TCP connection from {client} to {server}: {served}")
        return {
            "rtt_us": _per(out, "rtt_ns", max(1, out.get("trips", 0)) * 1e3),
            "throughput_mbit_s": _rate(out.get("sent_bytes", 0) * 8 / 1e6, out.get("send_ns")),
        }

    def _isolation(self, kind: str, name: str) -> dict[str, Any]:
        def said(*argv: str) -> str:
            res = self.client.exec(name, list(argv), timeout=60)
            return res["stdout"].decode(errors="replace").strip()

        inst = self.client.instance(name)
        # Who reaches the host's kernel, and through which filter: a container's every process
        # (its own status says); a VM's QEMU alone (the guest's processes reach only the
        # guest's kernel), whose status the host shows.
        if kind == "container":
            status = said("cat", "/proc/self/status")
            reaches = "every process of it"
            denied: int | None = len(DENIED_SYSCALLS)
        else:
            status = _read(f"/proc/{inst.get('pid')}/status")
            reaches = "its QEMU alone"
            denied = None
        seccomp = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:")), "?"
        )
        uid_map = said("cat", "/proc/self/uid_map").split()
        root_uid: int | None = None
        if kind == "container" and len(uid_map) >= 2:
            root_uid = int(uid_map[1])
        elif inst.get("pid"):
            with contextlib.suppress(OSError):
                root_uid = os.stat(f"/proc/{inst['pid']}").st_uid  # its QEMU's user
        kernel = _printable(said("uname", "-r"))
        return {
            "kernel": kernel,
            "shares_host_kernel": kernel == os.uname().release,
            "host_kernel_reached_by": reaches,
            "seccomp_mode": {"0": "none", "1": "strict", "2": "filter"}.get(seccomp, seccomp),
            "syscalls_denied_by_gureum": denied,
            "host_uid_of_root": root_uid,
            "devices_visible": len(said("ls", "/dev").split()),
        }

    def _fit(self, kind: str) -> None:
        """Launch instances of this kind until their memory on the host passes the budget,
        the host or the project refuses one, or ``max_fit`` run; each counted once ready."""
        r = self.results[kind]
        budget = self.s.budget_mib * 2**20
        names: list[str] = []
        used = 0
        r.fit_stopped_by = f"the bound ({self.s.max_fit})"
        try:
            while len(names) < self.s.max_fit:
                name = self._name(kind, f"fit{len(names)}")
                try:
                    self.launch(kind, name)
                except ApiError as exc:
                    if exc.code in REFUSED:
                        r.fit_stopped_by = f"refused: {exc.code}"
                        break
                    raise
                names.append(name)
                time.sleep(1)
                sums = pss_by_pid_namespace()
                used = sum(host_memory(self.client.instance(n), sums)[0] or 0 for n in names)
                if used > budget:
                    r.fit_stopped_by = f"the budget ({self.s.budget_mib} MiB)"
                    names.pop()  # the one that went over does not fit
                    break
            r.fit = len(names)
            self.say(f"{kind}: {r.fit} fit ({r.fit_stopped_by}; {used / 2**20:.0f} MiB)")
        finally:
            for name in [*names, self._name(kind, f"fit{len(names)}")]:
                self.delete(name)

    def _panic(self, kind: str, victim: str, bystander: str) -> None:
        """A kernel crash asked from inside one instance (``echo c > /proc/sysrq-trigger``):
        what happens to it, to the other one, and to the host."""
        self.say(f"{kind}: a kernel crash asked from inside {victim}")
        try:
            crash = ["sh", "-c", "echo c > /proc/sysrq-trigger"]
            refused = self.client.exec(victim, crash, timeout=15)["exit_code"] != 0
        except ApiError:  # no answer: the kernel under the command is gone
            refused = False
        time.sleep(3)
        self.results[kind].isolation["panic"] = {
            "write_refused": refused,
            "instance_state_after": self.client.instance(victim)["state"],
            "instance_answers_after": self._answers(victim),
            "other_instance_unaffected": self._answers(bystander),
            "host_unaffected": True,  # this process runs on, and the host's kernel with it
        }

    def _answers(self, name: str) -> bool:
        try:
            return bool(self.client.exec(name, ["true"], timeout=10)["exit_code"] == 0)
        except ApiError:
            return False

    # -- the report ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        host = self.client.host()
        return {
            "image": self.s.image,
            "settings": asdict(self.s),
            "accel": host.get("accel"),
            "accel_reason": host.get("accel_reason"),
            "host_kernel": os.uname().release,
            "results": {kind: asdict(r) for kind, r in self.results.items()},
            "rows": rows(self.results),
        }


def _rate(amount: float, ns: int | None) -> float | None:
    """``amount`` per second over ``ns`` nanoseconds; None when nothing was timed."""
    return amount / (ns / 1e9) if ns else None


def _per(figures: dict[str, int], key: str, divisor: float) -> float | None:
    return figures[key] / divisor if key in figures else None


def _printable(text: str, limit: int = 100) -> str:
    """What an instance said, safe to print on the user's terminal (no control characters)."""
    return "".join(c for c in text if c.isprintable())[:limit]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rows(results: dict[str, Kind]) -> list[dict[str, Any]]:
    """The table: one row per measure, each kind's value, and the container's as a multiple
    of the VM's (how many times more or less; ``better``: which direction is better)."""
    vm, ct = results["vm"], results["container"]

    def row(name: str, unit: str, v: float | None, c: float | None, better: str) -> dict:
        ratio = c / v if v and c is not None else None
        return {"measure": name, "unit": unit, "vm": v, "container": c, "ratio": ratio,
                "better": better}  # fmt: skip

    mem = "MiB " + (vm.memory_how or "PSS")
    out = [
        row("launch to ready (median)", "s", _median(vm.launch_s), _median(ct.launch_s), "lower"),
        row("stop (median)", "s", _median(vm.stop_s), _median(ct.stop_s), "lower"),
        row("host memory, idle", mem, _mib(vm.memory_bytes), _mib(ct.memory_bytes), "lower"),
        row("instances in the budget", "count", vm.fit, ct.fit, "higher"),
        row("CPU job", "s", vm.cpu_s, ct.cpu_s, "lower"),
        row("system call (getppid)", "ns", vm.syscall_ns, ct.syscall_ns, "lower"),
    ]
    for key, name, unit in (
        ("write_mb_s", "disk sequential write", "MB/s"),
        ("read_mb_s", "disk sequential read", "MB/s"),
        ("randwrite_iops", "disk random 4 KiB write+sync", "IOPS"),
        ("randread_iops", "disk random 4 KiB read", "IOPS"),
    ):
        out.append(row(name, unit, vm.disk.get(key), ct.disk.get(key), "higher"))
    out.append(row("TCP throughput", "Mbit/s", vm.net.get("throughput_mbit_s"),
                   ct.net.get("throughput_mbit_s"), "higher"))  # fmt: skip
    out.append(row("TCP round trip", "µs", vm.net.get("rtt_us"), ct.net.get("rtt_us"), "lower"))
    return out


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def isolation_lines(results: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(fact, VM, container) rows of the isolation facts, as read from each system."""
    vm, ct = results["vm"]["isolation"], results["container"]["isolation"]

    def panic(facts: dict[str, Any]) -> str:
        p = facts.get("panic")
        if not p:
            return "not tried"
        if p["write_refused"]:
            return "refused (read-only /proc: the kernel is the host's)"
        own = "answers" if p["instance_answers_after"] else "stopped answering"
        other = "others unaffected" if p["other_instance_unaffected"] else "OTHERS AFFECTED"
        return f"its kernel crashed: it {own} ({p['instance_state_after']}), {other}"

    yield "kernel", vm.get("kernel", "?"), ct.get("kernel", "?")
    yield ("shares the host's kernel", str(vm.get("shares_host_kernel")),
           str(ct.get("shares_host_kernel")))  # fmt: skip
    yield ("host's kernel reached by", vm.get("host_kernel_reached_by", "?"),
           ct.get("host_kernel_reached_by", "?"))  # fmt: skip

    def seccomp(facts: dict[str, Any]) -> str:
        denied = facts.get("syscalls_denied_by_gureum")
        mode = facts.get("seccomp_mode", "?")
        return f"{mode} ({denied} calls denied)" if denied else f"{mode} (QEMU's sandbox)"

    yield "seccomp on those", seccomp(vm), seccomp(ct)
    yield ("host uid of its root", str(vm.get("host_uid_of_root")),
           str(ct.get("host_uid_of_root")))  # fmt: skip
    yield "devices in /dev", str(vm.get("devices_visible")), str(ct.get("devices_visible"))
    yield "kernel crash from inside", panic(vm), panic(ct)


def chart(report: dict[str, Any], path: Path) -> None:
    """A PNG: for each measure, the container's value as a multiple of the VM's (log scale;
    right of 1 is better for the container)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in report["rows"] if r["ratio"]]
    labels = [r["measure"] for r in shown]
    # Drawn so that right is always better for the container.
    advantage = [r["ratio"] if r["better"] == "higher" else 1 / r["ratio"] for r in shown]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    colours = ["tab:green" if a >= 1 else "tab:red" for a in advantage]
    ax.barh(labels, advantage, color=colours)
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("container's advantage over the VM (x times; left of 1: the VM's)")
    ax.set_title(f"gureum compare {report['image']} (accelerator: {report['accel']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
