"""Network commands: network, secgroup, forward, nic."""

from __future__ import annotations

from typing import Annotated

import typer

from gureum.cli import output
from gureum.cli.output import Format, OutputOpt, bold, err, out
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


def _emit(data: object, fmt: Format, human: str) -> None:
    if fmt == Format.json:
        output.print_json(data)
    else:
        out.print(human)


# -- networks ------------------------------------------------------------------------------------
@network_app.command("create")
def network_create(
    name: Annotated[str, typer.Argument(help="Network name.")],
    subnet: Annotated[str, typer.Option(help="IPv4 CIDR, e.g. 10.80.1.0/24 (/16 to /29).")],
    imds_tokens: Annotated[
        bool,
        typer.Option(
            "--imds-tokens-required", help="Metadata answers IMDSv2 (token) requests only."
        ),
    ] = False,
    nat: Annotated[bool, typer.Option("--nat", help="Egress NAT (not available yet).")] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a network: its own namespace, bridge, DHCP/DNS server, firewall and metadata."""
    body = {"name": name, "subnet": subnet, "imds_tokens_required": imds_tokens, "nat": nat}
    with Client() as c:
        net = c.request("POST", "/v1/networks", json=body)
    _emit(net, fmt, f"network {name} created: {net['subnet']}, gateway/DNS {net['gateway']}")


@network_app.command("list")
def network_list(fmt: OutputOpt = Format.table) -> None:
    """List networks."""
    with Client() as c:
        nets = c.request("GET", "/v1/networks")
    if fmt == Format.json:
        output.print_json(nets)
        return
    output.table(
        ["NAME", "SUBNET", "GATEWAY", "IMDS", "INSTANCES"],
        [
            [
                n["name"],
                n["subnet"],
                n["gateway"],
                "tokens" if n["imds_tokens_required"] else "v1+v2",
                str(len(n["instances"])),
            ]
            for n in nets
        ],
    )


@network_app.command("show")
def network_show(
    name: Annotated[str, typer.Argument(help="Network name.")], fmt: OutputOpt = Format.table
) -> None:
    """One network and the instances on it."""
    with Client() as c:
        net = c.request("GET", f"/v1/networks/{name}")
    if fmt == Format.json:
        output.print_json(net)
        return
    out.print(
        bold(
            net["name"],
            f" {net['subnet']} gateway {net['gateway']} (namespace {net['namespace']})",
        )
    )
    for i in net["instances"]:
        out.print(f"  {i['name']:<20} {i['ip']:<16} {i['mac']}")


@network_app.command("delete")
def network_delete(
    name: Annotated[str, typer.Argument(help="Network name.")], fmt: OutputOpt = Format.table
) -> None:
    """Delete a network (refused while instances use it)."""
    with Client() as c:
        net = c.request("DELETE", f"/v1/networks/{name}")
    _emit(net, fmt, f"network {name} deleted")


# -- security groups -----------------------------------------------------------------------------
@secgroup_app.command("create")
def secgroup_create(
    name: Annotated[str, typer.Argument(help="Group name.")], fmt: OutputOpt = Format.table
) -> None:
    """Create a security group (members reach each other; others need a rule)."""
    with Client() as c:
        group = c.request("POST", "/v1/secgroups", json={"name": name})
    _emit(group, fmt, f"security group {name} created")


@secgroup_app.command("list")
def secgroup_list(fmt: OutputOpt = Format.table) -> None:
    """List security groups with their rules."""
    with Client() as c:
        groups = c.request("GET", "/v1/secgroups")
    if fmt == Format.json:
        output.print_json(groups)
        return
    output.table(
        ["NAME", "INSTANCES", "RULES"],
        [
            [g["name"], str(g["instances"]), "; ".join(r["text"] for r in g["rules"]) or "-"]
            for g in groups
        ],
    )


@secgroup_app.command("show")
def secgroup_show(
    name: Annotated[str, typer.Argument(help="Group name.")], fmt: OutputOpt = Format.table
) -> None:
    """One security group and its rules (with their ids)."""
    with Client() as c:
        group = c.request("GET", f"/v1/secgroups/{name}")
    if fmt == Format.json:
        output.print_json(group)
        return
    out.print(bold(group["name"], f" ({group['instances']} instances): same-group traffic allowed"))
    for r in group["rules"]:
        out.print(f"  {r['id']}  {r['text']}")


@secgroup_app.command("delete")
def secgroup_delete(
    name: Annotated[str, typer.Argument(help="Group name.")], fmt: OutputOpt = Format.table
) -> None:
    """Delete a security group (refused while in use)."""
    with Client() as c:
        group = c.request("DELETE", f"/v1/secgroups/{name}")
    _emit(group, fmt, f"security group {name} deleted")


@rule_app.command("add")
def rule_add(
    group: Annotated[str, typer.Argument(help="Group name.")],
    ingress: Annotated[
        str, typer.Option("--ingress", help="tcp/80, tcp/8000-8080, udp/53, icmp or all.")
    ],
    source: Annotated[
        str | None, typer.Option("--from", help="Source CIDR, e.g. 0.0.0.0/0.")
    ] = None,
    source_group: Annotated[
        str | None, typer.Option("--from-group", help="Source security group.")
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Let inbound traffic in; applies at once to running VMs."""
    body = {"ingress": ingress, "from_cidr": source, "from_group": source_group}
    with Client() as c:
        result = c.request("POST", f"/v1/secgroups/{group}/rules", json=body)
    rule = result["rules"][-1]
    _emit(result, fmt, f"rule {rule['id']} added to {group}: {rule['text']}")


@rule_app.command("remove")
def rule_remove(
    group: Annotated[str, typer.Argument(help="Group name.")],
    rule_id: Annotated[str, typer.Argument(help="Rule id (see `secgroup show`).")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Remove a rule; applies at once to running VMs."""
    with Client() as c:
        result = c.request("DELETE", f"/v1/secgroups/{group}/rules/{rule_id}")
    _emit(result, fmt, f"rule {rule_id} removed from {group}")


# -- port forwards -------------------------------------------------------------------------------
@forward_app.command("add")
def forward_add(
    name: Instance,
    mapping: Annotated[
        str, typer.Argument(help="HOSTPORT:GUESTPORT, e.g. 8080:80 (on 127.0.0.1).")
    ],
    fmt: OutputOpt = Format.table,
) -> None:
    """Forward a host loopback port to a port of the VM."""
    with Client() as c:
        fwd = c.request("POST", f"/v1/instances/{name}/forwards", json={"mapping": mapping})
    _emit(fwd, fmt, f"{fwd['host']} -> {name} {fwd['guest']}")


@forward_app.command("list")
def forward_list(name: Instance, fmt: OutputOpt = Format.table) -> None:
    """A VM's port forwards."""
    with Client() as c:
        fwds = c.request("GET", f"/v1/instances/{name}/forwards")
    if fmt == Format.json:
        output.print_json(fwds)
    elif not fwds:
        err.print(f"{name} has no port forwards.")
    else:
        output.table(["ID", "HOST", "GUEST"], [[f["id"], f["host"], f["guest"]] for f in fwds])


@forward_app.command("remove")
def forward_remove(
    name: Instance,
    forward: Annotated[str, typer.Argument(help="Forward id, host port or ADDRESS:PORT.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Remove a port forward."""
    with Client() as c:
        fwd = c.request("DELETE", f"/v1/instances/{name}/forwards/{forward}")
    _emit(fwd, fmt, f"forward {fwd['host']} removed")


# -- NICs ----------------------------------------------------------------------------------------
@nic_app.command("add")
def nic_add(
    name: Instance,
    network: Annotated[str, typer.Option("--network", help="Network to attach to.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Attach a NIC (hot-plugged now if the VM runs, else from its next boot)."""
    with Client() as c:
        nic = c.request("POST", f"/v1/instances/{name}/nics", json={"network": network})
    _emit(nic, fmt, f"NIC {nic['mac']} on {nic['network']} ({nic['ip']}): {nic['applied']}")


@nic_app.command("list")
def nic_list(name: Instance, fmt: OutputOpt = Format.table) -> None:
    """A VM's NICs."""
    with Client() as c:
        nics = c.request("GET", f"/v1/instances/{name}/nics")
    if fmt == Format.json:
        output.print_json(nics)
        return
    output.table(
        ["SLOT", "NETWORK", "IP", "MAC", "ID"],
        [[str(n["slot"]), n["network"], n["ip"], n["mac"], n["id"]] for n in nics],
    )


@nic_app.command("remove")
def nic_remove(
    name: Instance,
    nic: Annotated[str, typer.Argument(help="NIC id, MAC, IP or network name.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Detach a NIC (hot-unplugged if the VM runs)."""
    with Client() as c:
        gone = c.request("DELETE", f"/v1/instances/{name}/nics/{nic}")
    _emit(gone, fmt, f"NIC {gone['mac']} on {gone['network']} removed: {gone['applied']}")


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
    app.add_typer(secgroup_app, name="secgroup")
    app.add_typer(forward_app, name="forward")
    app.add_typer(nic_app, name="nic")
