"""Networks, NICs, security groups and port forwards: the pure data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

PROTOCOLS = ("tcp", "udp", "icmp", "all")
# Where cloud-init's NoCloud datasource reads an instance's data: the network's metadata
# service. A VM is told through its SMBIOS serial (engine/qemu/argv.py), a container through a
# file in its own layer (host/containers.py).
NOCLOUD_URL = "http://169.254.169.254/nocloud/"


# The shared address space (RFC 6598) between a --nat network and its uplink, a /30 each
# (network/uplink.py); a NAT network's own subnet may not overlap it.
NAT_TRANSFER = ipaddress.IPv4Network("100.64.0.0/10")


@dataclass(frozen=True)
class Network:
    id: str
    project_id: str
    name: str
    subnet: str  # e.g. 10.80.1.0/24
    nat: bool  # egress NAT to the outside (off by default)
    imds_tokens_required: bool  # metadata: IMDSv2 tokens only
    created_at: float
    vni: int | None = None  # its VXLAN network identifier, given by the store (one per network)

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The network's own address: gateway, DHCP and DNS server."""
        return str(next(self.net.hosts()))

    def host_addresses(self) -> list[str]:
        """Addresses VMs may get (all hosts but the gateway)."""
        return [str(a) for a in self.net.hosts()][1:]

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "nat": self.nat,
            "imds_tokens_required": self.imds_tokens_required,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Nic:
    id: str
    instance_id: str
    network_id: str
    slot: int  # its PCIe root port in the VM (0..MAX_NICS-1)
    mac: str
    ip: str
    created_at: float

    @property
    def tap(self) -> str:
        """Its TAP device's name in the network's namespace."""
        return f"t{self.instance_id[-11:]}{self.slot}"


@dataclass(frozen=True)
class Rule:
    id: str
    secgroup_id: str
    protocol: str  # tcp, udp, icmp, all
    port_from: int | None
    port_to: int | None
    cidr: str | None  # source CIDR, or
    source_group: str | None  # source security group id
    created_at: float

    def describe(self, group_names: dict[str, str] | None = None) -> str:
        ports = ""
        if self.port_from is not None:
            ports = f"/{self.port_from}" + (
                f"-{self.port_to}" if self.port_to != self.port_from else ""
            )
        source = (
            self.cidr
            or f"group {(group_names or {}).get(self.source_group or '', self.source_group)}"
        )
        return f"ingress {self.protocol}{ports} from {source}"


@dataclass
class SecGroup:
    id: str
    project_id: str
    name: str
    created_at: float
    rules: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class Forward:
    id: str
    instance_id: str
    host_address: str
    host_port: int
    guest_port: int
    created_at: float
