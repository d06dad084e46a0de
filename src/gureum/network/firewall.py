"""A network's firewall, rendered as one nftables script and applied atomically.

Two tables in the network's namespace, both replaced whole on every change (``nft -f`` applies
a script as one transaction, so there is never a moment without rules):

- ``bridge gureum``: anti-spoofing on every VM's TAP. A VM may send only with its own MAC and
  its own IPv4 address (ARP included); the one exception is a DHCP request from 0.0.0.0.
  IPv6 from VMs is dropped (the networks are IPv4 only).
- ``inet gureum``: security groups, with connection tracking (bridged IPv4 passes through the
  inet hooks: ``net.bridge.bridge-nf-call-iptables=1`` in the namespace). Inbound connections to
  a VM are dropped unless it shares a security group with the source, or one of its groups has
  a rule letting the source in; replies to allowed connections pass. Connections the namespace
  itself opens to a VM (port forwards) meet the same rules, from the gateway's address. The
  namespace itself answers only DHCP, DNS, the metadata service and ping.

Rendering is pure (data in, text out) so it is unit-tested; ``apply`` is the only I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gureum.model.network import Rule
from gureum.sys.runner import arun

METADATA_IP = "169.254.169.254"
BRIDGE = "br0"  # the network's bridge, its guests' side
UPLINK = "up0"  # a NAT network's way out (network/uplink.py)
VXLAN = "vx0"  # a network's port to its other hosts (network/overlay.py)


@dataclass(frozen=True)
class Port:
    """One VM NIC as the firewall sees it."""

    tap: str
    mac: str
    ip: str
    groups: tuple[str, ...]  # security group ids


def _set_name(group_id: str) -> str:
    return "sg_" + group_id.replace("-", "_")


def _rule(rule: Rule) -> str:
    source = (
        f"ip saddr {rule.cidr}" if rule.cidr else f"ip saddr @{_set_name(rule.source_group or '')}"
    )
    if rule.protocol == "all":
        return f"{source} accept"
    if rule.protocol == "icmp":
        return f"{source} meta l4proto icmp accept"
    ports = ""
    if rule.port_from is not None:
        span = (
            str(rule.port_from)
            if rule.port_to in (None, rule.port_from)
            else f"{rule.port_from}-{rule.port_to}"
        )
        ports = f" {rule.protocol} dport {span}"
    else:
        ports = f" meta l4proto {rule.protocol}"
    return f"{source}{ports} accept"


def render(
    gateway: str,
    ports: list[Port],
    rules: dict[str, list[Rule]],
    *,
    nat: bool = False,
    overlay: bool = False,
) -> str:
    """The whole nftables script for one network. ``rules``: security group id -> its rules.
    ``nat``: the network has a way out (``network/uplink.py``): guests' connections through
    ``up0`` are masqueraded, and from ``up0`` only what a guest's groups let in gets through.
    ``overlay``: the network spans hosts (``network/overlay.py``): ARP for the gateway's and
    the metadata service's addresses, DHCP and IPv6 do not cross its VXLAN port, so that each
    instance reaches its own host's gateway (the same address and MAC on every host)."""
    lines = [
        "table bridge gureum",
        "delete table bridge gureum",
        "table inet gureum",
        "delete table inet gureum",
        "table ip gureum_nat",
        "delete table ip gureum_nat",
        "table bridge gureum {",
        "  chain prerouting {",
        "    type filter hook prerouting priority -300; policy accept;",
    ]
    for p in ports:
        tap = f'iifname "{p.tap}"'
        lines += [
            f"    {tap} ether saddr != {p.mac} drop",
            f"    {tap} ether type ip6 drop",
            f"    {tap} arp saddr ether != {p.mac} drop",
            f"    {tap} arp saddr ip != {p.ip} drop",
            f"    {tap} ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
            f"    {tap} ether type ip ip saddr != {p.ip} drop",
        ]
    local = f"{{ {gateway}, {METADATA_IP} }}"
    if overlay:
        lines += [
            f'    iifname "{VXLAN}" ether type ip6 counter drop',
            f'    iifname "{VXLAN}" arp daddr ip {local} counter drop',
            f'    iifname "{VXLAN}" arp saddr ip {local} counter drop',
            f'    iifname "{VXLAN}" udp dport {{ 67, 68 }} counter drop',
            "  }",
            "  chain postrouting {",
            "    type filter hook postrouting priority 0; policy accept;",
            f'    oifname "{VXLAN}" arp daddr ip {local} counter drop',
            f'    oifname "{VXLAN}" arp saddr ip {local} counter drop',
            f'    oifname "{VXLAN}" udp dport {{ 67, 68 }} counter drop',
        ]
    lines += ["  }", "}", "table inet gureum {"]
    groups_here = sorted({g for p in ports for g in p.groups} | _source_groups(rules))
    for gid in groups_here:
        members = sorted(p.ip for p in ports if gid in p.groups)
        elements = f" elements = {{ {', '.join(members)} }};" if members else ""
        lines.append(f"  set {_set_name(gid)} {{ type ipv4_addr;{elements} }}")
    lines += [
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        "    ct state established,related accept",
        "    ct state invalid drop",
    ]
    for p in ports:
        lines.append(f"    ip daddr {p.ip} jump to_{p.tap}")
    lines.append(f'    iifname "{UPLINK}" drop')  # from outside, to anything but a guest
    lines.append("  }")
    for p in ports:
        lines.append(f"  chain to_{p.tap} {{")
        for gid in p.groups:
            lines.append(f"    ip saddr @{_set_name(gid)} accept")  # same group
            lines += [f"    {_rule(r)}" for r in rules.get(gid, [])]
        lines += ["    drop", "  }"]
    # What the namespace itself sends to a VM (a port forward's relay, a ping from the host's
    # side) meets the same security groups: it comes from the gateway address, so a rule's
    # source must include the gateway for forwards to reach the VM. DHCP answers are not
    # replies conntrack knows (the request came from 0.0.0.0), so they pass by port.
    lines += [
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        "    ct state established,related accept",
        "    udp sport 67 udp dport 68 accept",
    ]
    for p in ports:
        lines.append(f"    ip daddr {p.ip} jump to_{p.tap}")
    lines.append("  }")
    lines += [
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
        # Only the guests' side: from the uplink (a NAT network's up0) none of it answers.
        f'    iifname "{BRIDGE}" udp dport {{ 53, 67 }} accept',
        f'    iifname "{BRIDGE}" tcp dport 53 accept',
        f'    iifname "{BRIDGE}" ip daddr {METADATA_IP} tcp dport 80 accept',
        f'    iifname "{BRIDGE}" icmp type echo-request accept',
        "  }",
        "}",
    ]
    if nat:
        lines += [
            "table ip gureum_nat {",
            "  chain postrouting {",
            "    type nat hook postrouting priority 100; policy accept;",
            f'    oifname "{UPLINK}" masquerade',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _source_groups(rules: dict[str, list[Rule]]) -> set[str]:
    return {r.source_group for rs in rules.values() for r in rs if r.source_group}


async def apply(namespace: str, script: str) -> None:
    await arun(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=script)
