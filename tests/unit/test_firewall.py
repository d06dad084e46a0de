"""The nftables renderer, table-driven: each security-group rule and each port as the lines of
nft they become (``network/firewall.py`` is pure: data in, script out)."""

from __future__ import annotations

import asyncio

import pytest

from gureum.model.network import NAT_TRANSFER, Rule
from gureum.network import uplink
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
    assert f'iifname "br0" ip daddr {METADATA_IP} tcp dport 80 accept' in inbound
    assert "set sg_sg_web { type ipv4_addr; elements = { 10.80.1.10 }; }" in script


def test_the_script_replaces_the_tables_whole():
    lines = render("10.80.1.1", [], {}).splitlines()
    assert lines[:6] == ["table bridge gureum", "delete table bridge gureum",
                         "table inet gureum", "delete table inet gureum",
                         "table ip gureum_nat", "delete table ip gureum_nat"]  # fmt: skip
    assert "table ip gureum_nat {" not in lines  # a sealed network masquerades nothing


def test_a_nat_network_masquerades_out_of_its_uplink_and_lets_nothing_in_unasked():
    script = render("10.80.1.1", [WEB], {}, nat=True)
    assert chain(script, "postrouting")[-1] == 'oifname "up0" masquerade'
    forward = chain(script, "forward")
    # From outside: to a guest only through its groups (the jump), to anything else never.
    assert forward.index("ip daddr 10.80.1.10 jump to_gt-a0") < forward.index('iifname "up0" drop')
    # The namespace's own services answer the guests' side only, never the uplink.
    for line in chain(script, "input")[3:]:
        assert line.startswith('iifname "br0"'), line


def test_a_network_spanning_hosts_keeps_its_gateway_dhcp_and_ipv6_on_each_host():
    assert '"vx0"' not in render("10.80.1.1", [WEB], {})
    script = render("10.80.1.1", [WEB], {}, overlay=True)
    local = "{ 10.80.1.1, 169.254.169.254 }"
    into = [x for x in chain(script, "prerouting") if x.startswith('iifname "vx0"')]
    assert into == ['iifname "vx0" ether type ip6 counter drop',
                    f'iifname "vx0" arp daddr ip {local} counter drop',
                    f'iifname "vx0" arp saddr ip {local} counter drop',
                    'iifname "vx0" udp dport { 67, 68 } counter drop']  # fmt: skip
    assert chain(script, "postrouting") == [
        "type filter hook postrouting priority 0; policy accept;",
        f'oifname "vx0" arp daddr ip {local} counter drop',
        f'oifname "vx0" arp saddr ip {local} counter drop',
        'oifname "vx0" udp dport { 67, 68 } counter drop',
    ]
    # The guests' own rules are untouched: anti-spoofing on the TAP comes first.
    assert chain(script, "prerouting")[1] == 'iifname "gt-a0" ether saddr != 52:54:00:00:00:0a drop'


def test_uplink_resolvers_and_transfer_nets(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\n")
    assert uplink.resolvers(None, resolv) == ["192.0.2.53"]  # loopback: unreachable from a netns
    assert uplink.resolvers("203.0.113.53, junk", resolv) == ["203.0.113.53"]
    nets = {uplink.transfer_net("gureum-x-n-1", attempt) for attempt in range(8)}
    assert len(nets) == 8 and all(n.subnet_of(NAT_TRANSFER) and n.prefixlen == 30 for n in nets)
    assert len(uplink.outside_name("gureum-abcdef12-n-0123456789ab")) <= 15  # an interface name


def test_a_nat_subnet_may_not_overlap_the_uplinks_space(tmp_path):
    from gureum.config import load_config
    from gureum.errors import InvalidInput
    from gureum.service.core import Services
    from tests.unit.fakehost import FakeHost

    config = load_config(tmp_path)
    svc = Services.build(config, host=FakeHost(config))
    try:
        svc.tenancy.ensure_default()
        with pytest.raises(InvalidInput, match=r"100\.64\.0\.0/10"):
            asyncio.run(svc.networks.create("lan", "100.64.8.0/24", nat=True))
        assert [n.name for n in svc.networks.list()] == []
    finally:
        svc.close()
