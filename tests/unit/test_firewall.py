"""The nftables renderer, table-driven: each security-group rule and each port as the lines of
nft they become (``network/firewall.py`` is pure: data in, script out)."""

from __future__ import annotations

import pytest

from gureum.model.network import Rule
from gureum.network.firewall import METADATA_IP, Port, render

WEB = Port(tap="gt-a0", mac="52:54:00:00:00:0a", ip="10.80.1.10", groups=("sg-web",))
DB = Port(tap="gt-b0", mac="52:54:00:00:00:0b", ip="10.80.1.11", groups=("sg-db",))


def chain(script: str, name: str) -> list[str]:
    """The lines of one chain, stripped."""
    lines = script.splitlines()
    start = lines.index(f"  chain {name} {{") + 1
    return [line.strip() for line in lines[start : lines.index("  }", start)]]


def rule(protocol: str, ports: tuple[int, int] | None = None, *, cidr: str | None = None,
         group: str | None = None) -> Rule:  # fmt: skip
    low, high = ports if ports else (None, None)
    return Rule("r-1", "sg-web", protocol, low, high, cidr, group, 0.0)


@pytest.mark.parametrize(
    ("given", "line"),
    [
        (rule("tcp", (80, 80), cidr="0.0.0.0/0"), "ip saddr 0.0.0.0/0 tcp dport 80 accept"),
        (rule("udp", (5000, 5010), cidr="10.0.0.0/8"),
         "ip saddr 10.0.0.0/8 udp dport 5000-5010 accept"),
        (rule("tcp", cidr="192.168.0.0/16"), "ip saddr 192.168.0.0/16 meta l4proto tcp accept"),
        (rule("icmp", cidr="0.0.0.0/0"), "ip saddr 0.0.0.0/0 meta l4proto icmp accept"),
        (rule("all", cidr="10.80.1.0/24"), "ip saddr 10.80.1.0/24 accept"),
        (rule("tcp", (22, 22), group="sg-db"), "ip saddr @sg_sg_db tcp dport 22 accept"),
    ],
)  # fmt: skip
def test_a_rule_becomes_one_line_in_its_ports_chain(given, line):
    script = render("10.80.1.1", [WEB, DB], {"sg-web": [given]})
    assert chain(script, "to_gt-a0") == [
        "ip saddr @sg_sg_web accept",  # members of the same group
        line,
        "drop",
    ]


def test_each_port_is_held_to_its_own_addresses():
    script = render("10.80.1.1", [WEB], {})
    for line in (
        'iifname "gt-a0" ether saddr != 52:54:00:00:00:0a drop',
        'iifname "gt-a0" ether type ip6 drop',
        'iifname "gt-a0" arp saddr ether != 52:54:00:00:00:0a drop',
        'iifname "gt-a0" arp saddr ip != 10.80.1.10 drop',
        'iifname "gt-a0" ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept',
        'iifname "gt-a0" ether type ip ip saddr != 10.80.1.10 drop',
    ):
        assert f"    {line}\n" in script


def test_every_path_to_a_vm_goes_through_its_groups():
    """Between guests (forward) and from the namespace itself (output: port forwards); the
    namespace answers only DHCP, DNS, metadata and ping."""
    script = render("10.80.1.1", [WEB, DB], {})
    forward, output = chain(script, "forward"), chain(script, "output")
    for lines in (forward, output):
        assert "ip daddr 10.80.1.10 jump to_gt-a0" in lines
        assert "ip daddr 10.80.1.11 jump to_gt-b0" in lines
        assert "ct state established,related accept" in lines
    assert "udp sport 67 udp dport 68 accept" in output
    inbound = chain(script, "input")
    assert inbound[0] == "type filter hook input priority 0; policy drop;"
    assert f"ip daddr {METADATA_IP} tcp dport 80 accept" in inbound
    assert "set sg_sg_web { type ipv4_addr; elements = { 10.80.1.10 }; }" in script


def test_the_script_replaces_the_tables_whole():
    lines = render("10.80.1.1", [], {}).splitlines()
    assert lines[:4] == ["table bridge gureum", "delete table bridge gureum",
                         "table inet gureum", "delete table inet gureum"]  # fmt: skip
