"""Egress NAT (issue 12, part 5), without a packet leaving the machine.

The test makes two namespaces of its own: ``inet``, the uplink gureum is configured to use
(``GUREUM_NAT_UPLINK_NETNS``), and ``www`` behind it, standing for the internet, with an HTTP
server and a DNS server on documentation addresses (203.0.113.0/24). A guest on a ``--nat``
network fetches from the server by name; the server sees the uplink's address, never the
guest's; a guest on a sealed network cannot; and the uplink cannot open a connection to a guest
unless one of the guest's security groups lets it in.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import running_service
from tests.integration.test_network import sh

WWW_IP, DNS_IP, UPLINK_IP = "203.0.113.10", "203.0.113.53", "203.0.113.1"
NAME = "files.example.test"

SERVER = r"""
import http.server, sys
seen = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(seen, "a") as f:
            f.write(self.client_address[0] + "\n")
        body = b"hello from the internet\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((sys.argv[2], 80), Handler).serve_forever()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def internet(tmp_path_factory):
    """(uplink namespace, file of client addresses the server saw)."""
    tag = secrets.token_hex(3)
    inet, www = f"gt-inet-{tag}", f"gt-www-{tag}"
    folder = tmp_path_factory.mktemp("www")
    seen = folder / "seen"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in (inet, www):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", inet, "link", "add", "w0", "type", "veth", "peer", "name", "eth0", "netns", www)
        ip("-n", inet, "addr", "add", f"{UPLINK_IP}/24", "dev", "w0")
        ip("-n", www, "addr", "add", f"{WWW_IP}/24", "dev", "eth0")
        ip("-n", www, "addr", "add", f"{DNS_IP}/24", "dev", "eth0")
        for ns, dev in ((inet, "w0"), (www, "eth0")):
            ip("-n", ns, "link", "set", dev, "up")
        (folder / "server.py").write_text(SERVER)
        procs.append(subprocess.Popen(["ip", "netns", "exec", www, sys.executable,
                                       str(folder / "server.py"), str(seen), WWW_IP]))  # fmt: skip
        procs.append(subprocess.Popen(["ip", "netns", "exec", www, "dnsmasq",
                                       "--keep-in-foreground", "--conf-file=/dev/null",
                                       "--no-resolv", "--no-hosts",
                                       "--bind-interfaces", f"--listen-address={DNS_IP}",
                                       f"--address=/{NAME}/{WWW_IP}",
                                       f"--pid-file={folder / 'dns.pid'}"]))  # fmt: skip
        yield inet, seen
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for ns in (inet, www):
            subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.fixture(scope="module")
def nat(internet):
    inet, seen = internet
    env = {"GUREUM_NAT_UPLINK_NETNS": inet, "GUREUM_NAT_DNS": DNS_IP}
    with running_service(env) as svc:
        svc.cli("network", "create", "lan", "--subnet", "10.90.0.0/24", "--nat")
        svc.cli("network", "create", "sealed", "--subnet", "10.91.0.0/24")
        svc.launch("out1", networks=["lan"])
        svc.launch("in1", networks=["sealed"])
        svc.cli("launch", "tiny", "--name", "outc", "--container", "--network", "lan")
        yield svc, inet, seen
        svc.cli("delete", "outc", "--force")
        svc.cli("delete", "out1", "--force")
        svc.cli("delete", "in1", "--force")
        svc.cli("network", "delete", "lan")
        svc.cli("network", "delete", "sealed")
        links = subprocess.run(["ip", "-n", inet, "-o", "link"], capture_output=True, text=True)
        assert " gn" not in links.stdout  # the network's veth went with its namespace


def test_a_nat_guest_reaches_the_internet_by_name_masqueraded(nat):
    svc, _, seen = nat
    assert sh(svc, "out1", f"timeout 20 wget -qO- http://{NAME}/") == "hello from the internet\n"
    addresses = Path(seen).read_text().split()
    assert addresses and set(addresses) == {UPLINK_IP}, addresses  # never the guest's


def test_a_container_on_a_nat_network_goes_out_the_same_way(nat):
    """A container's NIC is on the same bridge as a VM's: the same NAT, by name."""
    svc, _, seen = nat
    assert sh(svc, "outc", f"timeout 20 wget -qO- http://{NAME}/") == "hello from the internet\n"
    assert set(Path(seen).read_text().split()) == {UPLINK_IP}  # masqueraded: never its address


def test_a_sealed_network_has_no_way_out(nat):
    svc, _, _ = nat
    code, said = sh(svc, "in1", f"timeout 10 wget -qO- http://{WWW_IP}/", check=False)
    assert code != 0, said
    code, said = sh(svc, "in1", f"timeout 10 nslookup {NAME}", check=False)
    assert code != 0 or WWW_IP not in said, said


def test_the_uplink_cannot_reach_in_unless_a_security_group_lets_it(nat):
    svc, inet, _ = nat
    network = json.loads(svc.cli("network", "show", "lan", "-o", "json").stdout)
    guest = next(i["ip"] for i in network["instances"] if i["name"] == "out1")
    # The uplink routes to the guest's subnet through the network's end of the veth pair, as a
    # hostile neighbour on the uplink could: the only thing between it and the guest is gureum.
    ns = network["namespace"]
    shown = subprocess.run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "up0"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    inside = shown.stdout.split()[3]
    ip("-n", inet, "route", "replace", "10.90.0.0/24", "via", inside.split("/")[0])
    sh(svc, "out1", "busybox httpd -p 8080 -h /etc")
    probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(3)\n"
             f"sys.exit(s.connect_ex(('{guest}', 8080)))")  # fmt: skip

    def connects() -> bool:
        return subprocess.run(["ip", "netns", "exec", inet, sys.executable, "-c", probe],
                              capture_output=True).returncode == 0  # fmt: skip

    assert not connects()
    svc.cli("secgroup", "rule", "add", "default", "--ingress", "tcp/8080", "--from", "0.0.0.0/0")
    assert connects()  # the path is there: only the security group stood in the way


def test_a_port_the_uplink_publishes_by_dnat_is_no_way_in_for_a_guest(nat):
    """Review of issue 12: DNAT'd traffic crosses the uplink's forward hook, not its input
    hook; a port the uplink publishes to something behind it (Docker's -p, a NodePort) must not
    be a door from a NAT network into the uplink's own services."""
    svc, inet, _ = nat
    script = (
        "table ip gt_publish {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority -100; policy accept;\n"
        f"    fib daddr type local tcp dport 8081 dnat to {WWW_IP}:80\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", inet, "nft", "-f", "-"], input=script, text=True,
                   check=True)  # fmt: skip
    try:
        code, said = sh(svc, "out1", f"timeout 8 wget -qO- http://{UPLINK_IP}:8081/",
                        check=False)  # fmt: skip
        assert code != 0, said  # the published port, through the uplink's own address
        # ... while the same server, asked directly, answers: the way out is there.
        assert "hello" in sh(svc, "out1", f"timeout 20 wget -qO- http://{WWW_IP}/")
    finally:
        subprocess.run(["ip", "netns", "exec", inet, "nft", "delete", "table", "ip",
                        "gt_publish"], check=False)  # fmt: skip
