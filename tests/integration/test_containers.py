"""System containers through the service (issue 14): `gureum launch tiny --container` and the
same life as a VM's (list, show, exec, console log, stop, start, restart, crash, re-adoption
after a service restart, delete), on the same networks (DHCP, DNS by name, isolation between
networks), with what keeps them apart as the containers themselves report it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from gureum.host.containers import cgroup_folders
from tests.integration.conftest import Service, _mounts_under
from tests.waiting import wait_for


def state(service: Service, name: str) -> str:
    with service.client() as c:
        return str(c.instance(name)["state"])


def show(service: Service, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(service.cli("show", name, "-o", "json").stdout)  # type: ignore[no-any-return]


def test_a_container_lives_like_a_vm_and_is_its_own_machine(service: Service) -> None:
    out = service.cli("launch", "tiny", "--name", "ct1", "--container", "--memory", "128M")
    assert "ct1 is running (container)" in out.stdout, out.stdout + out.stderr
    try:
        listing = service.cli("list").stdout
        row = next(line.split() for line in listing.splitlines() if line.startswith("ct1 "))
        assert row[1:3] == ["container", "running"], listing
        inst = show(service, "ct1")
        assert inst["type"] == "container" and inst["boot"]["total_s"] < 5, inst
        # Its own machine: its name, its own processes only (its init is pid 1), the address
        # the service's DHCP gave it, its memory limit.
        assert service.exec("ct1", "hostname").strip() == "ct1"
        ps = service.exec("ct1", "ps", "-o", "pid,comm")
        pids = {line.split()[0]: line.split()[1] for line in ps.splitlines()[1:]}
        assert pids.get("1") == "init", ps
        assert len(pids) < 10, ps  # its own few: no host process is visible
        ip = inst["nics"][0]["ip"]
        assert f"inet {ip}/" in service.exec("ct1", "ip", "-4", "addr", "show", "eth0")
        # Its control group (the host's view of it) holds it to the memory it was given.
        memory = next(f for f in cgroup_folders(inst["pid"]) if (f / "memory.stat").exists())
        limit = (memory / "memory.limit_in_bytes").read_text()
        assert int(limit) == 128 << 20, memory
        # Root inside is no one on the host: the first uid of a range of its own.
        uid_map = service.exec("ct1", "cat", "/proc/self/uid_map").split()
        assert uid_map[0] == "0" and int(uid_map[1]) >= 1_600_000_000 and uid_map[2] == "65536"
        assert os.stat(f"/proc/{inst['pid']}").st_uid == int(uid_map[1])
        # /proc/sys is read-only to it, whatever its root may do inside.
        with service.client() as c:
            res = c.exec("ct1", ["sh", "-c", "echo x > /proc/sys/kernel/hostname"])
        assert res["exit_code"] != 0
        # A command it does not have: exit 127, as a shell says.
        assert service.cli("exec", "ct1", "--", "no-such-cmd", check=False).returncode == 127
        log = service.cli("console", "ct1", "--log").stdout
        assert "gureum-init: ready" in log

        # Stop (its init's own power-off), start, restart.
        assert "powered off" in service.cli("stop", "ct1").stderr
        assert state(service, "ct1") == "stopped"
        service.cli("start", "ct1")
        assert service.exec("ct1", "hostname").strip() == "ct1"
        service.cli("restart", "ct1")
        assert state(service, "ct1") == "running"

        # A snapshot of its own layer while it runs (frozen meanwhile), and back to it.
        service.exec("ct1", "sh", "-c", "echo one > /root/note")
        taken = service.cli("snapshot", "create", "ct1", "before").stdout
        assert "frozen" in taken, taken
        service.exec("ct1", "sh", "-c", "echo two > /root/note")
        service.cli("snapshot", "restore", "ct1", "before", "--restart")
        assert service.exec("ct1", "cat", "/root/note") == "one\n"
        # Its CPU and memory limits change at once, down as well as up.
        service.cli("resize", "ct1", "--memory", "192M", "--cpus", "2")
        pid = show(service, "ct1")["pid"]
        memory = next(f for f in cgroup_folders(pid) if (f / "memory.stat").exists())
        assert int((memory / "memory.limit_in_bytes").read_text()) == 192 << 20
        cpu = next(f for f in cgroup_folders(pid) if (f / "cpu.cfs_quota_us").exists())
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 2 * int(
            (cpu / "cpu.cfs_period_us").read_text()
        )
        # Its disk (its own layer) grows at its next start.
        service.cli("resize", "ct1", "--disk", "1G")
        service.cli("restart", "ct1")
        size = service.exec("ct1", "df", "-k", "/").splitlines()[1].split()[1]
        assert int(size) > 900 * 1024, size
    finally:
        ct_id = show(service, "ct1")["id"]
        service.cli("delete", "ct1", "--force")
    # Nothing of it stays: no folder, nothing mounted, no process of its uid range.
    assert not (service.home / "instances" / ct_id).exists()
    assert not [m for m in _mounts_under(service.home) if ct_id in m]


def test_containers_share_networks_by_name_and_nothing_across_them(service: Service) -> None:
    service.cli("network", "create", "ctnet", "--subnet", "10.77.5.0/24")
    try:
        service.cli("launch", "tiny", "--name", "ct2", "--container")
        service.cli("launch", "tiny", "--name", "ct3", "--container")
        service.cli("launch", "tiny", "--name", "ct4", "--container", "--network", "ctnet")
        # Same network: the same DNS answers by name, and packets pass.
        assert "1 packets received" in service.exec("ct3", "ping", "-c", "1", "-W", "3", "ct2")
        # Another network: not a packet, by name or by address.
        ip2 = show(service, "ct2")["nics"][0]["ip"]
        with service.client() as c:
            res = c.exec("ct4", ["ping", "-c", "1", "-W", "2", ip2])
        assert res["exit_code"] != 0, res
        # Each sees only its own processes (ct2's DHCP client is not among ct3's).
        ps = service.exec("ct3", "ps", "-o", "pid,args")
        assert "hostname:ct3" in ps and "hostname:ct2" not in ps, ps
        # Nor can it signal them: ct2's init, by its host pid, is no process of ct3's.
        with service.client() as c:
            res = c.exec("ct3", ["kill", "-0", str(show(service, "ct2")["pid"])])
        assert res["exit_code"] != 0, res
        # Nor read the host's files: a file made on the host's / is not in its /.
        marker = Path("/gureum-host-only-marker")
        marker.write_text("host\n")
        try:
            with service.client() as c:
                res = c.exec("ct3", ["cat", str(marker)])
            assert res["exit_code"] != 0 and b"host" not in res["stdout"], res
        finally:
            marker.unlink()

        # ct2's init dies (killed on the host): ct2 is crashed, the others run on.
        os.kill(show(service, "ct2")["pid"], signal.SIGKILL)
        wait_for(lambda: state(service, "ct2") == "crashed", 15, what="ct2 crashed")
        assert state(service, "ct3") == "running" and state(service, "ct4") == "running"
        service.cli("start", "ct2")
        assert service.exec("ct2", "hostname").strip() == "ct2"

        # The service goes down (killed) and comes back: the containers ran on and are re-adopted.
        pid3 = show(service, "ct3")["pid"]
        service.kill()
        service.start()
        assert show(service, "ct3")["pid"] == pid3 and state(service, "ct3") == "running"
        assert service.exec("ct3", "hostname").strip() == "ct3"
        # Re-adopted means watched: its end is seen again.
        service.cli("stop", "ct3")
        assert state(service, "ct3") == "stopped"
    finally:
        for name in ("ct2", "ct3", "ct4"):
            service.cli("delete", name, "--force", check=False)
        service.cli("network", "delete", "ctnet", check=False)


def test_a_debian_container_is_provisioned_by_cloud_init_and_logged_in_to(
    service: Service, key: Path, tmp_path: Path
) -> None:
    """`debian` as a container: its own systemd, cloud-init configured from the same metadata
    service as a VM (user-data and the SSH key), logged in to with `gureum ssh` through the
    same security groups, on the host's own kernel."""
    service.cli("image", "build", "debian", timeout=1800)
    user_data = tmp_path / "cloud.yaml"
    user_data.write_text("#cloud-config\nwrite_files:\n  - path: /etc/from-user-data\n"
                         "    content: hello container\n")  # fmt: skip
    service.cli("secgroup", "create", "ctssh")
    try:
        service.cli("launch", "debian", "--name", "ctdeb", "--container", "--memory", "512M",
                    "--secgroup", "ctssh", "--ssh-key", str(key.with_suffix(".pub")),
                    "--user-data", str(user_data), timeout=300)  # fmt: skip
        gateway = json.loads(service.cli("network", "show", "default", "-o", "json").stdout)[
            "gateway"
        ]
        service.cli("secgroup", "rule", "add", "ctssh", "--ingress", "tcp/22",
                    "--from", f"{gateway}/32")  # fmt: skip

        def ssh(*command: str) -> subprocess.CompletedProcess[str]:
            return service.cli("ssh", "ctdeb", "-i", str(key), "--", *command, check=False)

        wait_for(lambda: ssh("true").returncode == 0, 120, interval=1, what="SSH into ctdeb")
        # One command line: ssh hands the remote shell its words joined.
        said = ssh("id -un; uname -r; cat /etc/from-user-data; echo; cloud-init status").stdout
        said = said.split("\n")
        assert said[0] == "debian"
        assert said[1] == os.uname().release  # the host's kernel: no kernel of its own
        assert said[2] == "hello container"
        assert said[3] == "status: done"
        with service.client() as c:  # its own systemd, as root sees it
            systemd = c.exec("ctdeb", ["systemctl", "is-system-running"])["stdout"].strip()
        assert systemd in (b"running", b"degraded"), systemd
    finally:
        service.cli("delete", "ctdeb", "--force", check=False)
        service.cli("secgroup", "delete", "ctssh", check=False)


def test_compare_measures_a_vm_and_a_container_side_by_side(
    service: Service, tmp_path: Path
) -> None:
    """`gureum compare tiny`, small: every row measured in both, and the facts each system
    reports about itself (the full run is bench/compare.py)."""
    report_file, chart_file = tmp_path / "compare.json", tmp_path / "compare.png"
    service.cli("compare", "tiny", "--runs", "2", "--max-fit", "2", "--budget", "2G",
                "--json", str(report_file), "--chart", str(chart_file), timeout=900)  # fmt: skip
    report = json.loads(report_file.read_text())
    rows = {r["measure"]: r for r in report["rows"]}
    for name, row in rows.items():
        assert row["vm"] is not None and row["container"] is not None, name
    assert rows["launch to ready (median)"]["ratio"] < 1  # a container starts faster
    assert rows["host memory, idle"]["ratio"] < 0.5  # and takes less of the host
    vm = report["results"]["vm"]["isolation"]
    ct = report["results"]["container"]["isolation"]
    assert ct["shares_host_kernel"] and not vm["shares_host_kernel"]
    assert ct["host_uid_of_root"] >= 1_600_000_000 and vm["host_uid_of_root"] >= 1_500_000_000
    # A kernel crash asked from inside: the VM's own kernel dies, alone; the container's
    # write is refused (its kernel is the host's).
    assert not vm["panic"]["write_refused"] and not vm["panic"]["instance_answers_after"]
    assert vm["panic"]["other_instance_unaffected"]
    assert ct["panic"]["write_refused"] and ct["panic"]["other_instance_unaffected"]
    assert chart_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listing = service.cli("list").stdout
    assert "cmp-" not in listing  # everything it launched is gone
