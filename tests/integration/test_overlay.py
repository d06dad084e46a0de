"""A network spanning two hosts over VXLAN (issue 17, part 4), with packets, on one machine.

Each host is a gureum home with its networks' real namespaces, bridges, DHCP servers and
firewalls (``NetworkHost.ensure``, ``firewall.render``); its cluster address lives in a namespace
the test makes (``ul-a``, ``ul-b``), joined by a veth pair: the cluster network. Two networks with
the same subnet (10.91.0.0/24), each with an instance on each host: an instance stands as a
namespace of its own with a veth on its network's bridge, in place of a VM's TAP (what crosses
hosts is the bridge's business, not the guest's). Checked with ping and the instances' own
counters: an instance reaches the one on the other host in its own network, never the one with
the same address in the other network; a broadcast of one network reaches no instance of the
other; ARP for the gateway stays on its host; security groups hold across hosts.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gureum.config import load_config
from gureum.host.network import NetworkHost, bridge_mac
from gureum.model.network import Network
from gureum.network import firewall, overlay

SUBNET, GATEWAY = "10.91.0.0/24", "10.91.0.1"
UNDERLAY = {"a": "10.251.7.1", "b": "10.251.7.2"}
NETWORKS = {"n1": 7001, "n2": 7002}  # network -> VNI
# (host, network) -> the instance's address there: the same addresses in both networks,
# swapped between hosts, so that a packet that crossed into the wrong network would be answered.
ADDRESSES = {("a", "n1"): 10, ("b", "n1"): 11, ("a", "n2"): 11, ("b", "n2"): 10}


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60).stdout


class Hosts:
    def __init__(self, tmp_path: Path) -> None:
        self.tag = secrets.token_hex(2)
        self.namespaces: list[str] = []
        self.networks = {
            n: Network(f"n-{self.tag}{i:08x}", "p-default", n, SUBNET, False, False, 0.0)
            for i, n in enumerate(NETWORKS)
        }
        self.hosts = {h: NetworkHost(load_config(tmp_path / h)) for h in UNDERLAY}
        self.macs: dict[tuple[str, str], str] = {}  # each host's first instance of a network
        self.ports: dict[str, list[firewall.Port]] = {}  # network -> its instances, every host

    def ns(self, name: str) -> str:
        made = f"gureum-test-{self.tag}-{name}"
        if made not in self.namespaces:
            sh("ip", "netns", "add", made)
            self.namespaces.append(made)
        return made

    def vm(self, host: str, net: str) -> str:
        return self.ns(f"vm-{host}-{net}")

    def build(self) -> None:
        a, b = self.ns("ul-a"), self.ns("ul-b")
        sh("ip", "-n", a, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", b)
        for host, ns in (("a", a), ("b", b)):
            sh("ip", "-n", ns, "addr", "add", f"{UNDERLAY[host]}/24", "dev", "ul0")
            sh("ip", "-n", ns, "link", "set", "ul0", "up")
        for nh in self.hosts.values():
            for net in self.networks.values():
                asyncio.run(nh.ensure(net))
        for (host, name), octet in ADDRESSES.items():
            self.add_instance(host, name, octet)
        for host, nh in self.hosts.items():
            peer = UNDERLAY["b" if host == "a" else "a"]
            for name, net in self.networks.items():
                netns = nh.namespace(net.id)
                asyncio.run(overlay.join(netns, NETWORKS[name], UNDERLAY[host], [peer],
                                         bridge=firewall.BRIDGE,
                                         underlay_ns=self.ns(f"ul-{host}")))  # fmt: skip

    def add_instance(
        self, host: str, name: str, octet: int, vm: str | None = None, group: str = "sg-1"
    ) -> str:
        """An instance of network ``name`` on ``host`` at 10.91.0.``octet`` in security group
        ``group``: a namespace (``vm``, by default the host's one for that network) with a veth
        on the network's bridge; the network's firewall is rendered again on every host, with
        every host's instances of it, as the service hands each host the whole network's NICs.
        Its namespace."""
        netns = self.hosts[host].namespace(self.networks[name].id)
        vm = vm or self.vm(host, name)
        ip, port = f"10.91.0.{octet}", f"gt{host}{name}{octet}"
        sh("ip", "-n", netns, "link", "add", port, "type", "veth", "peer", "name",
           "eth0", "netns", vm)  # fmt: skip
        sh("ip", "-n", netns, "link", "set", port, "master", firewall.BRIDGE, "up")
        sh("ip", "-n", vm, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", vm, "link", "set", "eth0", "up")
        mac = sh("ip", "-n", vm, "-o", "link", "show", "eth0").split("link/ether ")[1].split()[0]
        self.macs.setdefault((host, name), mac)
        # No rules: only members of an instance's own group get in, wherever they run.
        self.ports.setdefault(name, []).append(firewall.Port(port, mac, ip, (group,)))
        script = firewall.render(GATEWAY, self.ports[name], {}, overlay=True)
        for other in self.hosts.values():
            asyncio.run(firewall.apply(other.namespace(self.networks[name].id), script))
        return vm

    def count_arp(self, ip: str) -> None:
        """Count, in every instance, the ARP requests for ``ip`` it receives."""
        for key in ADDRESSES:
            script = ("table arp seen {\n chain in {\n  type filter hook input priority 0;\n"
                      f"  arp operation request arp daddr ip {ip} counter\n }}\n}}\n")  # fmt: skip
            subprocess.run(["ip", "netns", "exec", self.vm(*key), "nft", "-f", "-"],
                           input=script, text=True, check=True, timeout=30)  # fmt: skip

    def arp_seen(self, host: str, net: str) -> int:
        out = sh("ip", "netns", "exec", self.vm(host, net), "nft", "list", "table", "arp", "seen")
        return int(out.split("packets ")[1].split()[0])

    def close(self) -> None:
        for nh in self.hosts.values():
            for net in self.networks.values():
                asyncio.run(nh.remove(net.id))
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "delete", ns, check=False)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path)
    try:
        made.build()
        yield made
    finally:
        made.close()


def ping(ns: str, ip: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", "2", "-i", "0.2", ip],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def neighbour(ns: str, ip: str) -> str:
    out = sh("ip", "-n", ns, "neigh", "show", ip)
    return out.split("lladdr ")[1].split()[0] if "lladdr" in out else ""


def test_one_network_across_two_hosts_and_no_packet_into_another(hosts: Hosts) -> None:
    a1, a2 = hosts.vm("a", "n1"), hosts.vm("a", "n2")
    # n1: a's instance (.10) reaches b's (.11), and it is b's n1 instance that answers, not
    # a's n2 instance, which has .11 too.
    reached = ping(a1, "10.91.0.11")
    assert reached.returncode == 0, reached.stdout + reached.stderr
    assert neighbour(a1, "10.91.0.11") == hosts.macs[("b", "n1")]
    # n2, the other way round.
    assert ping(a2, "10.91.0.10").returncode == 0
    assert neighbour(a2, "10.91.0.10") == hosts.macs[("b", "n2")]
    # A broadcast in n1 (ARP for an address nobody has) reaches n1's instance on the other
    # host, and no instance of n2 on either host.
    hosts.count_arp("10.91.0.99")
    assert ping(a1, "10.91.0.99", count=2).returncode != 0
    seen = {key: hosts.arp_seen(*key) for key in ADDRESSES}
    assert seen[("b", "n1")] > 0, seen
    assert seen[("a", "n2")] == seen[("b", "n2")] == 0, seen
    # The gateway answers on each host, with the network's one MAC, and ARP for it does not
    # cross: host a's postrouting rule counted (and dropped) the broadcast towards host b.
    assert ping(a1, GATEWAY).returncode == 0
    assert neighbour(a1, GATEWAY) == bridge_mac(hosts.networks["n1"].id)
    ns_a1 = hosts.hosts["a"].namespace(hosts.networks["n1"].id)
    chain = sh("ip", "netns", "exec", ns_a1, "nft", "list", "chain", "bridge", "gureum",
               "postrouting")  # fmt: skip
    line = next(x for x in chain.splitlines() if "arp daddr ip" in x)
    assert int(line.split("packets ")[1].split()[0]) > 0, chain


def test_peers_change_in_place(hosts: Hosts) -> None:
    ns = hosts.hosts["a"].namespace(hosts.networks["n1"].id)
    assert asyncio.run(overlay.flood_list(ns)) == {UNDERLAY["b"]}
    ul = hosts.ns("ul-a")
    asyncio.run(overlay.join(ns, 7001, UNDERLAY["a"], ["10.251.7.3", "10.251.7.4"],
                             bridge=firewall.BRIDGE, underlay_ns=ul))  # fmt: skip
    assert asyncio.run(overlay.flood_list(ns)) == {"10.251.7.3", "10.251.7.4"}
    # Host b is no longer sent broadcasts: a's instance cannot find b's any more.
    sh("ip", "-n", hosts.vm("a", "n1"), "neigh", "flush", "all")
    assert ping(hosts.vm("a", "n1"), "10.91.0.11", count=2).returncode != 0
    with pytest.raises(ValueError):
        asyncio.run(overlay.join(ns, 7001, UNDERLAY["a"], ["b; reboot"],
                                 bridge=firewall.BRIDGE, underlay_ns=ul))  # fmt: skip
    asyncio.run(overlay.leave(ns))
    assert asyncio.run(overlay.flood_list(ns)) == set()


def test_security_groups_hold_across_hosts(hosts: Hosts) -> None:
    # Members of one group reach each other from host to host with no rule naming an address
    # (b's instance is in a's group's set on both hosts); an instance of another group on the
    # other host is neither reached nor reaches.
    a1 = hosts.vm("a", "n1")
    assert ping(a1, "10.91.0.11").returncode == 0
    other = hosts.add_instance("b", "n1", 13, vm=hosts.ns("vm-b-n1-other"), group="sg-2")
    assert ping(a1, "10.91.0.13", count=2).returncode != 0
    assert ping(other, "10.91.0.10", count=2).returncode != 0
    assert ping(other, GATEWAY).returncode == 0  # its own host's gateway still answers it
