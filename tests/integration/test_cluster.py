"""A host agent joins a real `gureum serve` through its cluster port (issue 17, part 1), as an
administrator runs it: `gureum host enroll` on the control plane, `gureum agent --join TOKEN`
in another home (the other host), then `gureum host list` shows it reporting. The token does not
work twice. (Forged certificates, expiry, a wrong CA: tests/unit/test_enrolment.py.)"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gureum.cli.main import exit_for
from tests.integration.conftest import Service, new_home
from tests.waiting import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def control_plane(postgres) -> Iterator[Service]:
    env = {
        "GUREUM_CLUSTER_LISTEN": f"127.0.0.1:{_free_port()}",
        "GUREUM_DATABASE_URL": postgres.new_database(),
        "GUREUM_HOST_UNREACHABLE_AFTER": "20",  # twice an agent's 10 s between reports
    }
    svc = Service(new_home(), env)
    try:
        svc.start()
        yield svc
    finally:
        svc.cleanup()


def agent(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUREUM_")}
    env["GUREUM_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "gureum.cli.main", "agent", *args],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_cluster_needs_postgresql() -> None:
    home = new_home()
    refused = subprocess.run(
        [sys.executable, "-m", "gureum.cli.main", "serve"],
        env={**os.environ, "GUREUM_HOME": str(home), "GUREUM_CLUSTER_LISTEN": "127.0.0.1:8443"},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == exit_for("invalid-input"), refused.stderr
    assert "a cluster (cluster_listen) needs PostgreSQL" in refused.stderr
    assert not (home / "gureum.sock").exists()
    shutil.rmtree(home, ignore_errors=True)


def test_an_agent_joins_with_the_printed_token_and_reports(control_plane, tmp_path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    made = json.loads(control_plane.cli("host", "enroll", "h2", address, "-o", "json").stdout)
    joined = agent(tmp_path / "h2", "--join", made["token"], "--once")
    assert joined.returncode == 0, joined.stderr
    assert "joined the cluster as h2" in joined.stderr
    hosts = {
        h["name"]: h for h in json.loads(control_plane.cli("host", "list", "-o", "json").stdout)
    }
    h2 = hosts["h2"]
    assert (h2["state"], h2["address"], h2["local"]) == ("ready", address, False)
    assert h2["capacity"]["cpus"] == os.cpu_count()
    assert [h["local"] for h in hosts.values()].count(True) == 1
    # Its key stayed on its host; the control plane has the CA's.
    assert (tmp_path / "h2" / "agent" / "agent.key").stat().st_mode & 0o777 == 0o600
    assert (control_plane.home / "cluster" / "ca.key").stat().st_mode & 0o777 == 0o600
    # Reporting again needs no token; the token itself is spent.
    assert agent(tmp_path / "h2", "--once").returncode == 0
    replay = agent(tmp_path / "h2-again", "--join", made["token"], "--once")
    assert replay.returncode == exit_for("unauthenticated"), replay.stderr
    assert "already used" in replay.stderr
    # Nothing answers at its address yet: the control plane says so.
    unreached = control_plane.cli("host", "check", "h2", check=False)
    assert unreached.returncode != 0 and "cannot reach h2" in unreached.stderr
    # The agent running: it reports and answers the control plane on its command port.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUREUM_")}
    env["GUREUM_HOME"] = str(tmp_path / "h2")
    running = subprocess.Popen(
        [sys.executable, "-m", "gureum.cli.main", "agent"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            seen = control_plane.cli("host", "check", "h2", "-o", "json", check=False)
            if seen.returncode == 0 or time.monotonic() > deadline or running.poll() is not None:
                break
            time.sleep(0.5)
        assert seen.returncode == 0, (seen.stderr, running.poll())
        facts = json.loads(seen.stdout)["facts"]
        assert (facts["host"], facts["cpus"]) == ("h2", os.cpu_count())
    finally:
        running.terminate()
        _, err = running.communicate(timeout=30)
    assert f"answering the control plane on {address}" in err


def agent_answering(control_plane: Service, home: Path, *args: str, netns: str | None = None,
                    name: str = "h2") -> subprocess.Popen[bytes]:  # fmt: skip
    """`gureum agent ARGS` for the host ``name`` whose home is ``home`` (in network namespace
    ``netns``, if given), once the control plane's `host check NAME` gets its answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUREUM_")}
    env["GUREUM_HOME"] = str(home)
    inside = ["ip", "netns", "exec", netns] if netns else []
    with open(home / "agent.out", "ab") as log:
        proc = subprocess.Popen(
            [*inside, sys.executable, "-m", "gureum.cli.main", "agent", *args], env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while control_plane.cli("host", "check", name, check=False).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, (home / "agent.out").read_text()
        time.sleep(0.5)
    return proc


def _state(service: Service, name: str) -> str:
    return str(json.loads(service.cli("show", name, "-o", "json").stdout)["state"])


def test_a_vm_placed_on_a_joined_host_runs_under_its_agent(control_plane) -> None:
    """Issue 17: `launch --host h2` runs the VM under h2's agent (another home, its own QEMU
    and network), the guest answers through it and h2's metadata service answers the guest;
    the agent killed, the VM is shown unknown and
    keeps running; the agent back, it is watched again; stop and delete reach it there."""
    control_plane.cli("image", "build", "tiny", timeout=900)
    address = f"127.0.0.1:{_free_port()}"
    made = json.loads(control_plane.cli("host", "enroll", "h2", address, "-o", "json").stdout)
    h2 = Service(new_home())  # its home and what it leaves, as a service's (never started)
    running = agent_answering(control_plane, h2.home, "--join", made["token"])
    try:
        launched = control_plane.cli("launch", "tiny", "--name", "far", "--host", "h2",
                                     "-o", "json", timeout=600)  # fmt: skip
        inst = json.loads(launched.stdout)
        shown = json.loads(control_plane.cli("show", "far", "-o", "json").stdout)
        assert (shown["placement"]["host"], shown["state"]) == ("h2", "running"), shown
        # Its QEMU is h2's, from h2's copy of the image; nothing of it runs in the control
        # plane's home.
        assert h2.qemu_pids() and not control_plane.qemu_pids()
        assert (h2.home / "images" / "tiny").is_dir()
        phases = {p["event"] for p in shown["boot"]["phases"] if p["at"]}
        assert {"process_started", "agent_ready"} <= phases  # h2's engine's events, heard here
        # The guest itself answers, through h2's agent.
        out = control_plane.cli("exec", "far", "--", "cat", "/proc/sys/kernel/hostname").stdout
        assert out.strip() == "far"
        # Its metadata service is h2's, answering from what the control plane says of it.
        md = "http://169.254.169.254/latest/meta-data/"
        said = control_plane.cli("exec", "far", "--", "wget", "-qO-", md + "hostname").stdout
        assert said.strip() == "far"
        ip = control_plane.cli("exec", "far", "--", "wget", "-qO-", md + "local-ipv4").stdout
        assert ip.strip() == shown["nics"][0]["ip"], shown["nics"]
        # The agent killed: h2 goes unreachable and far unknown; its QEMU runs on.
        qemu = h2.qemu_pids()
        running.kill()
        running.wait(30)
        deadline = time.monotonic() + 60
        while _state(control_plane, "far") != "unknown":
            assert time.monotonic() < deadline, "far never became unknown"
            time.sleep(1)
        assert h2.qemu_pids() == qemu
        # The agent again (no token): h2 reports, far is watched again, and it answers.
        running = agent_answering(control_plane, h2.home)
        deadline = time.monotonic() + 60
        while _state(control_plane, "far") != "running":
            assert time.monotonic() < deadline, "far was never seen running again"
            time.sleep(1)
        # Shown running again as soon as h2 reports; watched again (and so commands reach it)
        # at the reconciler's next pass after that, which the control plane logs.
        log = control_plane.home / "service.log"
        while "far: watched again on h2" not in log.read_text():
            assert time.monotonic() < deadline, "far was never watched again"
            time.sleep(0.5)
        out = control_plane.cli("exec", "far", "--", "cat", "/proc/sys/kernel/hostname").stdout
        assert out.strip() == "far" and h2.qemu_pids() == qemu  # the same QEMU, not another
        control_plane.cli("stop", "far", timeout=120)
        assert _state(control_plane, "far") == "stopped"
        assert not h2.qemu_pids()
        disks = list((h2.home / "disks").iterdir())
        assert disks, "its disk is on h2"
        control_plane.cli("delete", "far")
        assert not any(d.exists() for d in disks)
        assert inst["id"] not in control_plane.cli("list", "-o", "json").stdout
    finally:
        # A test failed half-way: its VM goes through the agent, while that still runs.
        control_plane.cli("delete", "far", "--force", check=False)
        running.terminate()
        running.wait(30)
        h2.cleanup()  # fails the test on any QEMU, namespace or dnsmasq of h2's left behind


def test_a_network_spans_the_hosts_of_its_instances(postgres) -> None:
    """Issue 17, part 4, with VMs: the agent of h2 runs in a namespace of its own, reached over
    a cluster network the test makes (a veth pair); a VM on the control plane's host and one on
    h2 share the default network, which spans both over VXLAN: they reach each other by name,
    with ping and TCP, and the guest on h2 is told the VXLAN port's MTU."""
    tag = secrets.token_hex(2)
    ns, outside = f"gureum-test-{tag}-h2", f"gct{tag}"
    cp_ip, h2_ip = "10.252.9.1", "10.252.9.2"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    cp: Service | None = None
    h2 = Service(new_home())
    running: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "link", "add", outside, "type", "veth", "peer", "name", "cl0",
                        "netns", ns], check=True)  # fmt: skip
        subprocess.run(["ip", "addr", "add", f"{cp_ip}/24", "dev", outside], check=True)
        subprocess.run(["ip", "link", "set", outside, "up"], check=True)
        for args in (["addr", "add", f"{h2_ip}/24", "dev", "cl0"], ["link", "set", "cl0", "up"],
                     ["link", "set", "lo", "up"]):  # fmt: skip
            subprocess.run(["ip", "-n", ns, *args], check=True)
        cp = Service(new_home(), {"GUREUM_CLUSTER_LISTEN": f"{cp_ip}:{_free_port()}",
                                  "GUREUM_DATABASE_URL": postgres.new_database(),
                                  "GUREUM_HOST_NAME": "h1"})  # fmt: skip
        cp.start()
        cp.cli("image", "build", "tiny", timeout=900)
        made = json.loads(cp.cli("host", "enroll", "h2", f"{h2_ip}:8444", "-o", "json").stdout)
        running = agent_answering(cp, h2.home, "--join", made["token"], netns=ns)
        cp.cli("launch", "tiny", "--name", "a1", "--host", "h1", timeout=600)
        cp.cli("launch", "tiny", "--name", "b1", "--host", "h2", timeout=600)
        assert h2.qemu_pids() and len(cp.qemu_pids()) == 1
        # b1 got its address once the network spanned both: it was told the VXLAN port's MTU
        # (the cluster link's 1500 less VXLAN's 50).
        assert cp.exec("b1", "cat", "/sys/class/net/eth0/mtu").strip() == "1450"
        # By name, both ways: each host's DNS knows the whole network.
        for src, dst in (("a1", "b1"), ("b1", "a1")):
            out = cp.cli("exec", src, "--", "ping", "-c", "2", "-W", "5", dst, check=False)
            assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout + out.stderr
        # TCP, both ways: a megabyte of random bytes served by busybox httpd on one, fetched
        # whole (by digest) by the other; every full-sized frame crosses the VXLAN port.
        for server, client in (("b1", "a1"), ("a1", "b1")):
            made_sum = cp.exec(server, "sh", "-c", "mkdir -p /tmp/www && head -c 1000000 "
                               "/dev/urandom > /tmp/www/blob && sha256sum /tmp/www/blob && "
                               "httpd -p 8080 -h /tmp/www").split()[0]  # fmt: skip
            fetched = cp.exec(client, "sh", "-c", f"wget -q -O - http://{server}:8080/blob | "
                              "sha256sum").split()[0]  # fmt: skip
            assert fetched == made_sum, f"{client} fetched from {server} a blob not whole"
        cp.cli("delete", "b1", "--force")
        cp.cli("delete", "a1", "--force")
        assert not h2.qemu_pids()
    finally:
        try:
            if cp is not None:
                cp.cleanup()  # deletes its VMs, h2's through h2's agent
        finally:
            if running is not None:
                running.terminate()
                running.wait(30)
            try:
                h2.cleanup()  # fails the test on any QEMU, namespace or dnsmasq of h2's left
            finally:
                subprocess.run(["ip", "link", "del", outside], check=False)
                subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_a_launch_a_killed_control_plane_left_is_finished_by_the_other(postgres) -> None:
    """Issue 17, part 2: two control planes on one store (the second with a copy of the
    first's cluster folder, as docs/hosts.md says). The first is killed with SIGKILL while it
    waits for a VM it launched on h2 to boot; once its claim runs out the second takes the
    launch over: it adopts the QEMU already running there (none is started twice), finishes the
    operation the first began, and h2's agent reports to it from then on."""
    database = postgres.new_database()
    common = {"GUREUM_DATABASE_URL": database, "GUREUM_HOST_UNREACHABLE_AFTER": "20",
              "GUREUM_WORK_LEASE": "6"}  # fmt: skip
    first = Service(new_home(), {**common, "GUREUM_CLUSTER_LISTEN": f"127.0.0.1:{_free_port()}"})
    second_port = f"127.0.0.1:{_free_port()}"
    second = Service(new_home(), {**common, "GUREUM_HOST_NAME": "cp2",
                                  "GUREUM_CLUSTER_LISTEN": second_port})  # fmt: skip
    h2 = Service(new_home())
    running: subprocess.Popen[bytes] | None = None
    try:
        first.start()
        first.cli("image", "build", "tiny", timeout=900)
        shutil.copytree(first.home / "cluster", second.home / "cluster")
        second.start()
        address = f"127.0.0.1:{_free_port()}"
        made = json.loads(first.cli("host", "enroll", "h2", address, "-o", "json").stdout)
        running = agent_answering(first, h2.home, "--join", made["token"])
        with first.client() as c:
            op_id = c.launch("far", "tiny", host="h2")["operation"]["id"]
            deadline = time.monotonic() + 300
            while not any("QEMU running as pid" in p["message"]
                          for p in c.operation(op_id)["progress"]):  # fmt: skip
                assert time.monotonic() < deadline, c.operation(op_id)
                time.sleep(0.1)
        qemu = h2.qemu_pids()
        first.kill()  # mid-launch: its guest is still booting
        with second.client() as c:
            op = c.operation(op_id)
            deadline = time.monotonic() + 180
            while op["status"] == "running":
                assert time.monotonic() < deadline, op
                time.sleep(0.5)
                op = c.operation(op_id)
            shown = c.instance("far")
        assert op["status"] == "succeeded", op
        messages = [p["message"] for p in op["progress"]]
        assert any(m.startswith("taken over by control plane cp2") for m in messages), messages
        assert (shown["state"], shown["placement"]["host"]) == ("running", "h2"), shown
        assert h2.qemu_pids() == qemu and len(qemu) == 1  # the same QEMU, not a second
        out = second.cli("exec", "far", "--", "cat", "/proc/sys/kernel/hostname").stdout
        assert out.strip() == "far"
        # h2 reports to the second now (the first is gone): its next heartbeat (every 10 s)
        # finds it, and it is tried first from then on.
        wait_for(lambda: json.loads((h2.home / "agent" / "cluster.json").read_text())[
            "control_plane"] == second_port, 30, interval=0.5,
            what="h2's heartbeat going to the second control plane")  # fmt: skip
        second.cli("delete", "far", "--force")
        assert not h2.qemu_pids()
    finally:
        try:
            second.cleanup()  # deletes far through h2's agent if the test failed half-way
            first.cleanup(killed=True)  # what the killed one left of its home is removed
        finally:
            if running is not None:
                running.terminate()
                running.wait(30)
            h2.cleanup()


def test_three_hosts_spread_a_group_and_a_cordoned_one_takes_nothing(control_plane) -> None:
    """Issue 17, part 3, with VMs on three hosts (the control plane's own, h1, and two agents):
    a spread group puts one instance on each; a fourth of the group is refused with each host's
    reason; a cordoned host is passed over, and takes the instance again once uncordoned. The
    VMs have no NIC: all three hosts share one address here, so no overlay can join them
    (networks across hosts: the test above, with its own namespace)."""
    control_plane.cli("image", "build", "tiny", timeout=900)
    agents: dict[str, tuple[Service, subprocess.Popen[bytes]]] = {}
    try:
        for name in ("h2", "h3"):
            address = f"127.0.0.1:{_free_port()}"
            made = json.loads(control_plane.cli("host", "enroll", name, address,
                                                "-o", "json").stdout)  # fmt: skip
            home = Service(new_home())
            agents[name] = (home, agent_answering(control_plane, home.home, "--join",
                                                  made["token"], name=name))  # fmt: skip
        here = next(
            h["name"]
            for h in json.loads(control_plane.cli("host", "list", "-o", "json").stdout)
            if h["local"]
        )

        def launch(name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return control_plane.cli("launch", "tiny", "--name", name, "--spread-group", "web",
                                     "--network", "none", timeout=600, check=check)  # fmt: skip

        def host_of(name: str) -> str:
            shown = json.loads(control_plane.cli("show", name, "-o", "json").stdout)
            assert shown["state"] == "running", shown
            return str(shown["placement"]["host"])

        for name in ("web1", "web2", "web3"):
            launch(name)
        placed = {host_of(n): n for n in ("web1", "web2", "web3")}
        assert sorted(placed) == sorted([here, "h2", "h3"]), placed
        for name, (home, _) in agents.items():
            assert len(home.qemu_pids()) == 1, f"{name} runs other than its one VM"
        refused = launch("web4", check=False)
        assert refused.returncode != 0
        for name in (here, "h2", "h3"):
            assert f"{name}: already runs an instance of spread group 'web'" in refused.stderr
        # h3 cordoned and its member gone: the group could go there, but nothing new does.
        control_plane.cli("host", "cordon", "h3")
        control_plane.cli("delete", placed["h3"], "--force")
        refused = launch("web4", check=False)
        assert refused.returncode != 0 and "h3: cordoned" in refused.stderr, refused.stderr
        control_plane.cli("host", "uncordon", "h3")
        launch("web4")
        assert host_of("web4") == "h3"
        for name in ("web4", *(n for h, n in placed.items() if h != "h3")):
            control_plane.cli("delete", name, "--force")
        assert not any(home.qemu_pids() for home, _ in agents.values())
    finally:
        for name in ("web1", "web2", "web3", "web4"):  # a test failed half-way
            control_plane.cli("delete", name, "--force", check=False)
        for _home, proc in agents.values():
            proc.terminate()
            proc.wait(30)
        for home, _ in agents.values():
            home.cleanup()
