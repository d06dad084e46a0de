"""Network commands: network, secgroup, forward, nic."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, bold, call, emit, lines, listing
from gureum.client.client import Client

network_app = typer.Typer(
    help="Isolated virtual networks with DHCP, DNS and metadata.", no_args_is_help=True
)
secgroup_app = typer.Typer(
    help="Security groups: which inbound traffic reaches a VM.", no_args_is_help=True
)
rule_app = typer.Typer(help="Rules of a security group.", no_args_is_help=True)
forward_app = typer.Typer(
    help="Port forwards from a host loopback port to a VM.", no_args_is_help=True
)
nic_app = typer.Typer(
    help="A VM's network interfaces (hot-plugged when it runs).", no_args_is_help=True
)
secgroup_app.add_typer(rule_app, name="rule")

Instance = Annotated[str, typer.Argument(help="Instance name or id.")]
NetworkName = Annotated[str, typer.Argument(help="Network name.")]
GroupName = Annotated[str, typer.Argument(help="Group name.")]


# -- networks ------------------------------------------------------------------------------------
@network_app.command("create")
def network_create(
    name: NetworkName,
    subnet: Annotated[str, typer.Option(help="IPv4 CIDR, e.g. 10.80.1.0/24 (/16 to /29).")],
    imds_tokens: Annotated[
        bool,
        typer.Option(
            "--imds-tokens-required", help="Metadata answers IMDSv2 (token) requests only."
        ),
    ] = False,
    nat: Annotated[
        bool,
        typer.Option(
            "--nat",
            help="Egress NAT: guests reach out through the host (nothing reaches in unasked).",
        ),
    ] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a network: its own namespace, bridge, DHCP/DNS server, firewall and metadata."""
    net = call(Client.create_network, name, subnet, imds_tokens_required=imds_tokens, nat=nat)
    emit(net, fmt, f"network {name} created: {net['subnet']}, gateway/DNS {net['gateway']}")


@network_app.command("list")
def network_list(fmt: OutputOpt = Format.table) -> None:
    """List networks."""
    listing(
        call(Client.networks), fmt, ["NAME", "SUBNET", "GATEWAY", "IMDS", "INSTANCES"], _network_row
    )


def _network_row(n: dict[str, Any]) -> list[str]:
    imds = "tokens" if n["imds_tokens_required"] else "v1+v2"
    return [n["name"], n["subnet"], n["gateway"], imds, str(len(n["instances"]))]


@network_app.command("show")
def network_show(name: NetworkName, fmt: OutputOpt = Format.table) -> None:
    """One network and the instances on it."""
    net = call(Client.network, name)
    where = f" {net['subnet']} gateway {net['gateway']} (namespace {net['namespace']})"
    on = [f"  {i['name']:<20} {i['ip']:<16} {i['mac']}" for i in net["instances"]]
    emit(net, fmt, lines(bold(net["name"], where), *on))


@network_app.command("delete")
def network_delete(name: NetworkName, fmt: OutputOpt = Format.table) -> None:
    """Delete a network (refused while instances use it)."""
    emit(call(Client.delete_network, name), fmt, f"network {name} deleted")


# -- security groups -----------------------------------------------------------------------------
@secgroup_app.command("create")
def secgroup_create(name: GroupName, fmt: OutputOpt = Format.table) -> None:
    """Create a security group (members reach each other; others need a rule)."""
    emit(call(Client.create_secgroup, name), fmt, f"security group {name} created")


@secgroup_app.command("list")
def secgroup_list(fmt: OutputOpt = Format.table) -> None:
    """List security groups with their rules."""
    listing(call(Client.secgroups), fmt, ["NAME", "INSTANCES", "RULES"], _secgroup_row)


def _secgroup_row(g: dict[str, Any]) -> list[str]:
    return [g["name"], str(g["instances"]), "; ".join(r["text"] for r in g["rules"]) or "-"]


@secgroup_app.command("show")
def secgroup_show(name: GroupName, fmt: OutputOpt = Format.table) -> None:
    """One security group and its rules (with their ids)."""
    group = call(Client.secgroup, name)
    heading = bold(group["name"], f" ({group['instances']} instances): same-group traffic allowed")
    emit(group, fmt, lines(heading, *(f"  {r['id']}  {r['text']}" for r in group["rules"])))


@secgroup_app.command("delete")
def secgroup_delete(name: GroupName, fmt: OutputOpt = Format.table) -> None:
    """Delete a security group (refused while in use)."""
    emit(call(Client.delete_secgroup, name), fmt, f"security group {name} deleted")


@secgroup_app.command("attach")
def secgroup_attach(vm: Instance, name: GroupName, fmt: OutputOpt = Format.table) -> None:
    """Put a VM in one more security group: its firewall changes at once, running or not."""
    done = call(Client.attach_secgroup, vm, name)
    emit(done, fmt, f"{vm} is in {', '.join(done['secgroups'])}")


@secgroup_app.command("detach")
def secgroup_detach(vm: Instance, name: GroupName, fmt: OutputOpt = Format.table) -> None:
    """Take a VM out of a security group (it stays in at least one)."""
    done = call(Client.detach_secgroup, vm, name)
    emit(done, fmt, f"{vm} is in {', '.join(done['secgroups'])}")


Ingress = Annotated[str, typer.Option(help="tcp/80, tcp/8000-8080, udp/53, icmp or all.")]
FromCidr = Annotated[str | None, typer.Option("--from", help="Source CIDR, e.g. 0.0.0.0/0.")]
FromGroup = Annotated[str | None, typer.Option(help="Source security group.")]
RuleId = Annotated[str, typer.Argument(help="Rule id (see `secgroup show`).")]


@rule_app.command("add")
def rule_add(
    group: GroupName,
    ingress: Ingress,
    source: FromCidr = None,
    from_group: FromGroup = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Let inbound traffic in; applies at once to running VMs."""
    result = call(Client.add_rule, group, ingress, from_cidr=source, from_group=from_group)
    rule = result["rules"][-1]
    emit(result, fmt, f"rule {rule['id']} added to {group}: {rule['text']}")


@rule_app.command("remove")
def rule_remove(group: GroupName, rule_id: RuleId, fmt: OutputOpt = Format.table) -> None:
    """Remove a rule; applies at once to running VMs."""
    emit(call(Client.remove_rule, group, rule_id), fmt, f"rule {rule_id} removed from {group}")


# -- port forwards -------------------------------------------------------------------------------
Mapping = Annotated[
    str,
    typer.Argument(
        help="HOSTPORT:GUESTPORT (on 127.0.0.1) or ADDRESS:HOSTPORT:GUESTPORT (a loopback"
        " address), e.g. 8080:80."
    ),
]
ForwardRef = Annotated[str, typer.Argument(help="Forward id, host port or ADDRESS:PORT.")]


@forward_app.command("add")
def forward_add(name: Instance, mapping: Mapping, fmt: OutputOpt = Format.table) -> None:
    """Forward a host loopback port to a port of the VM."""
    fwd = call(Client.add_forward, name, mapping)
    emit(fwd, fmt, f"{fwd['host']} -> {name} {fwd['guest']}")


@forward_app.command("list")
def forward_list(name: Instance, fmt: OutputOpt = Format.table) -> None:
    """A VM's port forwards."""
    empty = f"{name} has no port forwards."
    listing(call(Client.forwards, name), fmt, ["ID", "HOST", "GUEST"], _forward_row, empty=empty)


def _forward_row(f: dict[str, Any]) -> list[str]:
    return [f["id"], f["host"], f["guest"]]


@forward_app.command("remove")
def forward_remove(name: Instance, forward: ForwardRef, fmt: OutputOpt = Format.table) -> None:
    """Remove a port forward."""
    fwd = call(Client.remove_forward, name, forward)
    emit(fwd, fmt, f"forward {fwd['host']} removed")


# -- NICs ----------------------------------------------------------------------------------------
NIC_COLUMNS = ["SLOT", "NETWORK", "IP", "MAC", "ID"]
NicRef = Annotated[str, typer.Argument(help="NIC id, MAC, IP or network name.")]


@nic_app.command("add")
def nic_add(
    name: Instance,
    network: Annotated[str, typer.Option("--network", help="Network to attach to.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Attach a NIC (hot-plugged now if the VM runs, else from its next boot)."""
    nic = call(Client.add_nic, name, network=network)
    said = f"NIC {nic['mac']} on {nic['network']} ({nic['ip']}): {nic['applied']}"
    emit(nic, fmt, said + (f"\n{nic['note']}" if nic.get("note") else ""))


@nic_app.command("list")
def nic_list(name: Instance, fmt: OutputOpt = Format.table) -> None:
    """A VM's NICs."""
    listing(call(Client.nics, name), fmt, NIC_COLUMNS, _nic_row)


def _nic_row(n: dict[str, Any]) -> list[str]:
    return [str(n["slot"]), n["network"], n["ip"], n["mac"], n["id"]]


@nic_app.command("remove")
def nic_remove(name: Instance, nic: NicRef, fmt: OutputOpt = Format.table) -> None:
    """Detach a NIC (hot-unplugged if the VM runs)."""
    gone = call(Client.remove_nic, name, nic)
    emit(gone, fmt, f"NIC {gone['mac']} on {gone['network']} removed: {gone['applied']}")


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
    app.add_typer(secgroup_app, name="secgroup")
    app.add_typer(forward_app, name="forward")
    app.add_typer(nic_app, name="nic")
