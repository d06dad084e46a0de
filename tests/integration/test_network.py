"""Real packets between real VMs, checked from inside the guests."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from gureum.cli.main import ExitCode, exit_for
from gureum.ids import ec2_id
from tests.waiting import wait_for

pytestmark = pytest.mark.vm

MD = "http://169.254.169.254/latest"
SERVE = "(while true; do echo port{0} | nc -l -p {0}; done) >/dev/null 2>&1 &"


def sh(service, name, script, check=True):
    with service.client() as c:
        res = c.exec(name, ["sh", "-c", script], timeout=60)
    out = res["stdout"].decode()
    if check:
        assert res["exit_code"] == 0, (script, out, res["stderr"])
    return out if check else (res["exit_code"], out + res["stderr"].decode())


def ip_of(service, name, network=None):
    nics = json.loads(service.cli("nic", "list", name, "-o", "json").stdout)
    return next(n["ip"] for n in nics if network is None or n["network"] == network)


def listening(service, name, *ports: int) -> bool:
    """Whether the guest has a TCP socket listening on each of ``ports``."""
    tables = sh(service, name, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true")
    found = {
        int(fields[1].rsplit(":", 1)[1], 16)
        for fields in (line.split() for line in tables.splitlines()[1:])
        if len(fields) > 3 and fields[3] == "0A"  # TCP_LISTEN
    }
    return set(ports) <= found


def serve(service, name, *ports: int) -> None:
    """Answer ``port<N>`` to every connection on each of ``ports``, from now on."""
    sh(service, name, "".join(SERVE.format(port) for port in ports))
    wait_for(lambda: listening(service, name, *ports), 30, what=f"{name} listening on {ports}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def net(service, tmp_path_factory):
    user_data = tmp_path_factory.mktemp("ud") / "user-data"
    user_data.write_text("#cloud-config\nhostname: from-user-data\n")
    service.cli("network", "create", "backend", "--subnet", "10.80.1.0/24")
    service.cli("network", "create", "other", "--subnet", "10.80.2.0/24")
    service.cli("network", "create", "twin", "--subnet", "10.80.1.0/24")  # overlaps backend
    key = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5U/wqN7jpyEI0PoZMdrAuPnutMEuuZNh6mC4KVP8Na "
        "test@gureum"
    )
    service.cli("launch", "tiny", "--name", "na", "--network", "backend",
                "--user-data", str(user_data), "--ssh-key", key)  # fmt: skip
    service.cli("launch", "tiny", "--name", "nb", "--network", "backend")
    service.cli("launch", "tiny", "--name", "nx", "--network", "other")
    service.cli("launch", "tiny", "--name", "ny", "--network", "twin")
    yield
    for name in ("na", "nb", "nc", "nx", "ny", "nz"):
        service.cli("delete", name, "--force", check=False)
    for network in ("backend", "other", "twin", "secure"):
        service.cli("network", "delete", network, check=False)
    for group in ("web", "peer"):
        service.cli("secgroup", "delete", group, check=False)


@pytest.fixture
def web_vm(service, net):
    """nc, serving on ports 80 and 81 in the group web, with the rules that
    test_security_group_rules_apply_live leaves (tcp/81 open from 10.80.1.0/24, tcp/80 not):
    made here unless that test made it."""
    with service.client() as c:
        if "nc" not in {i["name"] for i in c.instances()}:
            service.cli("secgroup", "create", "web")
            service.cli("secgroup", "rule", "add", "web", "--ingress", "tcp/81",
                        "--from", "10.80.1.0/24")  # fmt: skip
            service.cli("launch", "tiny", "--name", "nc", "--network", "backend",
                        "--secgroup", "web")  # fmt: skip
            serve(service, "nc", 80, 81)
    return "nc"


def test_same_network_talks_by_name(service, net):
    out = sh(service, "na", "ping -c1 -W3 nb")
    assert "1 packets received" in out and ip_of(service, "nb") in out
    sh(service, "nb", "(echo tcp-works | nc -l -p 7000) >/dev/null 2>&1 &")
    wait_for(lambda: listening(service, "nb", 7000), 30, what="nb listening on 7000")
    assert sh(service, "na", "nc -w 3 nb 7000 </dev/null").strip() == "tcp-works"
    assert sh(service, "na", "cat /etc/resolv.conf").strip() == "nameserver 10.80.1.1"


def test_addresses_are_stable_across_stop_start(service, net):
    before = ip_of(service, "nb")
    service.cli("stop", "nb")
    service.cli("start", "nb")
    assert ip_of(service, "nb") == before
    assert f"inet {before}/24" in sh(service, "nb", "ip -4 addr show eth0")


def test_different_networks_exchange_no_packet(service, net):
    a, x = ip_of(service, "na"), ip_of(service, "nx")
    assert sh(service, "nx", f"ping -c1 -W2 {a}", check=False)[0] != 0
    assert sh(service, "na", f"ping -c1 -W2 {x}", check=False)[0] != 0
    # Overlapping subnets: ny has an address from the same range as na, in its own world.
    y = ip_of(service, "ny")
    assert y.startswith("10.80.1.")
    assert "1 packets received" in sh(service, "ny", "ping -c1 -W2 10.80.1.1")
    code, _ = sh(service, "ny", f"ping -c1 -W2 {ip_of(service, 'nb')}", check=False)
    assert code != 0 or ip_of(service, "nb") == y  # nb is not on twin


def test_spoofed_source_is_dropped(service, net):
    b = ip_of(service, "nb")
    assert "1 packets received" in sh(service, "na", "ping -c1 -W2 10.80.1.1")
    # na claims nb's address: its packets never leave its TAP.
    sh(service, "na", f"ip addr add {b}/32 dev eth0")
    try:
        code, out = sh(service, "na", f"ping -c1 -W2 -I {b} 10.80.1.1", check=False)
        assert code != 0 and "0 packets received" in out
    finally:
        sh(service, "na", f"ip addr del {b}/32 dev eth0")
    # Nor with another MAC.
    code, _ = sh(service, "na", "ip link set eth0 address 52:54:00:de:ad:01 && "
                 "ping -c1 -W2 10.80.1.1; r=$?; ip link set eth0 address "
                 f"{json.loads(service.cli('show', 'na', '-o', 'json').stdout)['mac']}; exit $r",
                 check=False)  # fmt: skip
    assert code != 0
    assert "1 packets received" in sh(service, "na", "ping -c1 -W2 10.80.1.1")


def test_security_group_rules_apply_live(service, net):
    service.cli("secgroup", "create", "web")
    out = service.cli(
        "secgroup", "rule", "add", "web", "--ingress", "tcp/80", "--from", "0.0.0.0/0"
    )
    rule80 = out.stdout.split()[1]
    service.cli("launch", "tiny", "--name", "nc", "--network", "backend", "--secgroup", "web")
    serve(service, "nc", 80, 81)
    assert sh(service, "na", "nc -w 3 nc 80 </dev/null").strip() == "port80"
    assert sh(service, "na", "nc -w 3 nc 81 </dev/null", check=False)[0] != 0
    assert sh(service, "na", "ping -c1 -W2 nc", check=False)[0] != 0  # default deny
    # Open 81 on the running VM, then close 80.
    service.cli("secgroup", "rule", "add", "web", "--ingress", "tcp/81", "--from", "10.80.1.0/24")
    assert sh(service, "na", "nc -w 3 nc 81 </dev/null").strip() == "port81"
    service.cli("secgroup", "rule", "remove", "web", rule80)
    assert sh(service, "na", "nc -w 3 nc 80 </dev/null", check=False)[0] != 0
    # nc may still start connections out: the replies come back (connection tracking).
    assert "1 packets received" in sh(service, "nc", "ping -c1 -W2 10.80.1.1")
    # A rule naming a source group lets that group's members in.
    service.cli("secgroup", "rule", "add", "web", "--ingress", "icmp", "--from-group", "default")
    assert "1 packets received" in sh(service, "na", "ping -c1 -W2 nc")


def test_a_running_vms_groups_change_live(service, net, web_vm):
    service.cli("secgroup", "create", "p82")
    service.cli("secgroup", "rule", "add", "p82", "--ingress", "tcp/82", "--from", "0.0.0.0/0")
    serve(service, web_vm, 82)
    try:
        assert sh(service, "na", f"nc -w 3 {web_vm} 82 </dev/null", check=False)[0] != 0
        service.cli("secgroup", "attach", web_vm, "p82")
        assert sh(service, "na", f"nc -w 3 {web_vm} 82 </dev/null").strip() == "port82"
        shown = json.loads(service.cli("show", web_vm, "-o", "json").stdout)
        assert sorted(shown["secgroups"]) == ["p82", "web"]
        service.cli("secgroup", "detach", web_vm, "p82")
        assert sh(service, "na", f"nc -w 3 {web_vm} 82 </dev/null", check=False)[0] != 0
    finally:
        service.cli("secgroup", "detach", web_vm, "p82", check=False)
        service.cli("secgroup", "delete", "p82")


def test_port_forward_reaches_a_guest_server(service, net, web_vm):
    # nc's groups let tcp/81 in from 10.80.1.0/24 (which holds the gateway, a forward's source)
    # and no longer tcp/80 (web_vm): a forward to 80 gets nothing.
    closed = free_port()
    service.cli("forward", "add", "nc", f"{closed}:80")
    with socket.create_connection(("127.0.0.1", closed), timeout=10) as s:
        s.settimeout(15)
        assert s.recv(100) == b""
    service.cli("forward", "remove", "nc", str(closed))
    port = free_port()
    out = service.cli("forward", "add", "nc", f"{port}:81")
    assert f"127.0.0.1:{port}" in out.stdout
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100) == b"port81\n"
    listed = json.loads(service.cli("forward", "list", "nc", "-o", "json").stdout)
    assert [f["host_port"] for f in listed] == [port]
    # What a person reads: the address, groups and forwards in show, the address in list.
    ip = ip_of(service, "nc")
    shown = service.cli("show", "nc").stdout
    assert f"backend {ip}" in shown and "Groups:" in shown and "web" in shown
    assert f"127.0.0.1:{port} -> {ip}:81" in shown
    row = next(line for line in service.cli("list").stdout.splitlines() if line.startswith("nc "))
    assert ip in row.split()
    res = service.cli("forward", "add", "na", f"{port}:80", check=False)
    assert res.returncode == ExitCode.REFUSED and "[conflict]" in res.stderr
    res = service.cli("forward", "add", "na", f"10.0.0.1:{free_port()}:80", check=False)
    assert res.returncode == 1 and "loopback" in res.stderr
    service.cli("forward", "remove", "nc", str(port))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_metadata_answers_each_vm_with_its_own_data(service, net):
    for name in ("na", "nb"):
        shown = json.loads(service.cli("show", name, "-o", "json").stdout)
        # EC2's shape, as the EC2 API shows it (cloud-init's NoCloud id stays gureum's own)
        assert sh(service, name, f"wget -qO- {MD}/meta-data/instance-id") == ec2_id(
            "i", shown["id"]
        )
        assert sh(service, name, f"wget -qO- {MD}/meta-data/hostname") == name
        assert sh(service, name, f"wget -qO- {MD}/meta-data/local-ipv4") == ip_of(service, name)
        assert sh(service, name, f"wget -qO- {MD}/meta-data/mac") == shown["mac"]
    assert "hostname: from-user-data" in sh(service, "na", f"wget -qO- {MD}/user-data")
    assert sh(service, "na", f"wget -qO- {MD}/meta-data/public-keys/").strip() == "0=key-0"
    assert "test@gureum" in sh(service, "na", f"wget -qO- {MD}/meta-data/public-keys/0/openssh-key")
    assert sh(service, "nb", f"wget -qO- {MD}/user-data", check=False)[0] != 0  # nb has none


# busybox nc stops at the end of its input, before the answer: keep the input open a moment.
PUT_TOKEN = (
    "(printf 'PUT /latest/api/token HTTP/1.0\\r\\nHost: x\\r\\n"
    "X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1) "
    "| nc 169.254.169.254 80 | tail -1"
)


def test_metadata_tokens_are_bound_to_their_vm(service, net):
    token = sh(service, "na", PUT_TOKEN).strip()
    assert len(token) > 20
    got = sh(
        service,
        "na",
        f"wget -qO- --header 'X-aws-ec2-metadata-token: {token}' {MD}/meta-data/hostname",
    )
    assert got == "na"
    # The same token presented by nb is refused: it was issued to na.
    code, out = sh(service, "nb", f"wget -qO- --header 'X-aws-ec2-metadata-token: {token}' "
                   f"{MD}/meta-data/hostname", check=False)  # fmt: skip
    assert code != 0 and "401" in out
    # Headers claiming to be someone else change nothing.
    forged = sh(service, "nb", f"wget -qO- --header 'X-Forwarded-For: {ip_of(service, 'na')}' "
                f"{MD}/meta-data/hostname")  # fmt: skip
    assert forged == "nb"


def test_metadata_forged_address_gets_nothing(service, net):
    a = ip_of(service, "na")
    # nb takes na's address: the anti-spoofing rules drop it at nb's TAP; nothing comes back.
    sh(service, "nb", f"ip addr add {a}/32 dev eth0")
    try:
        _, out = sh(service, "nb", "wget -T 3 -qO- --bind-address "
                       f"{a} {MD}/meta-data/instance-id || wget -T 3 -qO- {MD}/meta-data/user-data",
                       check=False)  # fmt: skip
        assert "from-user-data" not in out
        assert json.loads(service.cli("show", "na", "-o", "json").stdout)["id"] not in out
    finally:
        sh(service, "nb", f"ip addr del {a}/32 dev eth0")


def test_network_requiring_tokens(service, net):
    service.cli("network", "create", "secure", "--subnet", "10.80.3.0/24", "--imds-tokens-required")
    service.cli("launch", "tiny", "--name", "nz", "--network", "secure")
    code, out = sh(service, "nz", f"wget -qO- {MD}/meta-data/hostname", check=False)
    assert code != 0 and "401" in out
    token = sh(service, "nz", PUT_TOKEN).strip()
    assert (
        sh(
            service,
            "nz",
            f"wget -qO- --header 'X-aws-ec2-metadata-token: {token}' {MD}/meta-data/hostname",
        )
        == "nz"
    )


def test_nic_hot_plug(service, net):
    out = json.loads(service.cli("nic", "add", "na", "--network", "other", "-o", "json").stdout)
    assert out["applied"] == "live" and out["network"] == "other"
    wait_for(lambda: out["ip"] in sh(service, "na", "ip -4 addr"), 30, interval=0.2,
             what=f"na has {out['ip']}")  # fmt: skip
    assert "1 packets received" in sh(service, "na", f"ping -c1 -W3 {ip_of(service, 'nx')}")
    gone = json.loads(service.cli("nic", "remove", "na", "other", "-o", "json").stdout)
    assert gone["applied"] == "live"
    assert out["ip"] not in sh(service, "na", "ip -4 addr")
    assert [
        n["network"] for n in json.loads(service.cli("nic", "list", "na", "-o", "json").stdout)
    ] == ["backend"]


def test_a_freed_address_goes_to_the_next_vm_at_once(service, net):
    """dnsmasq keeps leases; a deleted VM's lease must not block its address for the next."""
    service.cli("launch", "tiny", "--name", "nr1", "--network", "backend")
    first = ip_of(service, "nr1")
    service.cli("delete", "nr1", "--force")
    service.cli("launch", "tiny", "--name", "nr2", "--network", "backend")
    try:
        assert ip_of(service, "nr2") == first
        assert f"inet {first}/24" in sh(service, "nr2", "ip -4 addr show eth0")
    finally:
        service.cli("delete", "nr2", "--force")


def test_network_errors(service, net, web_vm):
    cases = [
        (["network", "delete", "backend"], "in use by", "conflict"),
        (
            ["network", "create", "bad", "--subnet", "10.1.2.3/24"],
            "invalid subnet",
            "invalid-input",
        ),
        (["network", "create", "bad", "--subnet", "nonsense"], "invalid subnet", "invalid-input"),
        (
            ["network", "create", "bad", "--subnet", "10.0.0.0/8"],
            "between a /16 and a /29",
            "invalid-input",
        ),
        (["network", "create", "bad", "--subnet", "169.254.0.0/24"], "reserved", "invalid-input"),
        (
            ["network", "create", "backend", "--subnet", "10.80.9.0/24"],
            "already exists",
            "conflict",
        ),
        (["network", "create", "none", "--subnet", "10.80.9.0/24"], "reserved", "invalid-input"),
        (["network", "show", "nowhere"], "no network named", "not-found"),
        (
            ["launch", "tiny", "--name", "nw", "--network", "nowhere"],
            "no network named",
            "not-found",
        ),
        (
            ["secgroup", "rule", "add", "web", "--ingress", "gre", "--from", "0.0.0.0/0"],
            "protocol",
            "invalid-input",
        ),
        (
            ["secgroup", "rule", "add", "web", "--ingress", "tcp/99999", "--from", "0.0.0.0/0"],
            "ports",
            "invalid-input",
        ),
        (["secgroup", "rule", "add", "web", "--ingress", "tcp/22"], "say where", "invalid-input"),
        (["secgroup", "delete", "web"], "in use", "conflict"),
    ]
    before = sorted(
        n["name"] for n in json.loads(service.cli("network", "list", "-o", "json").stdout)
    )
    for args, words, code in cases:
        res = service.cli(*args, check=False)
        assert res.returncode == exit_for(code), args
        assert words in res.stderr and f"[{code}]" in res.stderr, (args, res.stderr)
    after = sorted(
        n["name"] for n in json.loads(service.cli("network", "list", "-o", "json").stdout)
    )
    assert before == after


def test_deleting_leaves_no_network_trace(service, net):
    namespaces = json.loads(service.cli("network", "show", "other", "-o", "json").stdout)[
        "namespace"
    ]
    service.cli("delete", "nx", "--force")
    links = subprocess.run(
        ["ip", "-n", namespaces, "-o", "link"], capture_output=True, text=True
    ).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert names == {"lo", "br0"}  # nx's TAP went with its QEMU
    service.cli("network", "delete", "other")
    assert not Path(f"/run/netns/{namespaces}").exists()
    assert (
        namespaces
        not in subprocess.run(["pgrep", "-a", "dnsmasq"], capture_output=True, text=True).stdout
    )
