"""`gureum compare`'s parts that need no instance: the probe (compiled as the command compiles
it, run here on the host as it runs inside a VM or a container) and the report's rows."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from gureum.cli.comparison import Kind, build_probe, isolation_lines, rows


def probe(tmp_path: Path) -> Path:
    binary = tmp_path / "probe"
    binary.write_bytes(build_probe(tmp_path / "cache"))
    binary.chmod(0o755)
    return binary


def figures(*argv: str) -> dict[str, int]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_the_probe_measures_cpu_syscalls_and_disk(tmp_path):
    binary = probe(tmp_path)
    assert figures(str(binary), "cpu", "1000")["ns"] > 0
    assert figures(str(binary), "syscall", "10000")["ns"] > 0
    disk = figures(str(binary), "disk", str(tmp_path / "data"), "4")
    assert disk["read_bytes"] == 4 << 20  # everything written was read back
    assert disk["random_ops"] == 500 and disk["randwrite_ns"] > 0 and disk["randread_ns"] > 0
    assert not (tmp_path / "data").exists()  # it cleans up after itself
    # A bad command line: exit EINVAL, nothing printed.
    bad = subprocess.run([str(binary), "nonsense"], capture_output=True)
    assert bad.returncode == 22 and bad.stdout == b""


def test_the_probe_measures_tcp_between_two_of_itself(tmp_path):
    binary = probe(tmp_path)
    server = subprocess.Popen([str(binary), "serve", "5391"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening 5391\n"
        said = figures(str(binary), "client", "127.0.0.1", "5391", "50", "8")
    finally:
        threading.Thread(target=server.wait, args=(30,)).start()
    assert said["trips"] == 50 and said["rtt_ns"] > 0
    assert said["sent_bytes"] == 8 << 20 and said["send_ns"] > 0
    assert server.wait(30) == 0


def test_the_table_puts_the_container_against_the_vm():
    vm = Kind(launch_s=[4.0, 5.0, 6.0], memory_bytes=256 << 20, memory_how="PSS", fit=3)
    ct = Kind(launch_s=[0.2, 0.3, 0.25], memory_bytes=2 << 20, memory_how="PSS", fit=32)
    table = {r["measure"]: r for r in rows({"vm": vm, "container": ct})}
    ready = table["launch to ready (median)"]
    assert (ready["vm"], ready["container"]) == (5.0, 0.25) and ready["ratio"] == 0.05
    assert table["host memory, idle"]["ratio"] == 2 / 256
    assert table["instances in the budget"]["ratio"] == 32 / 3
    assert table["CPU job"]["ratio"] is None  # not measured: no ratio is made up


def test_isolation_facts_say_what_each_system_reported():
    results = {
        "vm": {"isolation": {"kernel": "6.1.0", "shares_host_kernel": False,
                             "panic": {"write_refused": False, "instance_answers_after": False,
                                       "instance_state_after": "running",
                                       "other_instance_unaffected": True}}},
        "container": {"isolation": {"kernel": "6.18", "shares_host_kernel": True,
                                    "seccomp_mode": "filter", "syscalls_denied_by_gureum": 33,
                                    "panic": {"write_refused": True}}},
    }  # fmt: skip
    lines = {fact: (vm, ct) for fact, vm, ct in isolation_lines(results)}
    assert lines["shares the host's kernel"] == ("False", "True")
    assert lines["seccomp on those"][1] == "filter (33 calls denied)"
    assert "stopped answering" in lines["kernel crash from inside"][0]
    assert "others unaffected" in lines["kernel crash from inside"][0]
    assert lines["kernel crash from inside"][1].startswith("refused")
