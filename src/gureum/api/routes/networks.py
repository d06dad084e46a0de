"""Networks, security groups, NICs and port forwards."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gureum.api.auth import Member, Viewer
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import (
    ForwardIn,
    ForwardOut,
    NetworkIn,
    NetworkOut,
    NicIn,
    NicOut,
    RuleIn,
    SecGroupIn,
    SecGroupOut,
)
from gureum.service.core import Services

router = APIRouter(tags=["networks"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.post("/v1/instances/{ref}/secgroups/{secgroup}", openapi_extra={"x-gureum-role": "member"})
async def attach_secgroup(ref: str, secgroup: str, svc: Svc, scope: Member) -> dict[str, object]:
    """Put a VM in one more security group; its firewall changes at once, running or not."""
    inst = svc.instances.get(ref, scope.project_id)
    return {"instance": inst.name, "secgroups": await svc.secgroups.attach(inst, secgroup)}


@router.delete(
    "/v1/instances/{ref}/secgroups/{secgroup}", openapi_extra={"x-gureum-role": "member"}
)
async def detach_secgroup(ref: str, secgroup: str, svc: Svc, scope: Member) -> dict[str, object]:
    """Take a VM out of a security group (it stays in at least one: 409 for its last)."""
    inst = svc.instances.get(ref, scope.project_id)
    return {"instance": inst.name, "secgroups": await svc.secgroups.detach(inst, secgroup)}


@router.get(
    "/v1/networks", response_model=list[NetworkOut], openapi_extra={"x-gureum-role": "viewer"}
)
async def list_networks(svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    return [svc.networks.view(n) for n in svc.networks.list(scope.project_id)]


@router.post(
    "/v1/networks",
    status_code=201,
    response_model=NetworkOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def create_network(body: NetworkIn, svc: Svc, scope: Member) -> dict[str, object]:
    """A sealed network: its own namespace, bridge, DHCP and DNS server, firewall and metadata
    service. Subnets of different networks may overlap."""
    net = await svc.networks.create(
        body.name,
        body.subnet,
        imds_tokens_required=body.imds_tokens_required,
        nat=body.nat,
        project_id=scope.project_id,
    )
    return svc.networks.view(net)


@router.get(
    "/v1/networks/{network}", response_model=NetworkOut, openapi_extra={"x-gureum-role": "viewer"}
)
async def get_network(network: str, svc: Svc, scope: Viewer) -> dict[str, object]:
    return svc.networks.view(svc.networks.get(network, scope.project_id))


@router.delete(
    "/v1/networks/{network}", response_model=NetworkOut, openapi_extra={"x-gureum-role": "member"}
)
async def delete_network(network: str, svc: Svc, scope: Member) -> dict[str, object]:
    """Refused while any instance has a NIC on it."""
    net = await svc.networks.delete(network, scope.project_id)
    return {**net.to_dict(), "namespace": "", "instances": []}


@router.get(
    "/v1/secgroups", response_model=list[SecGroupOut], openapi_extra={"x-gureum-role": "viewer"}
)
async def list_secgroups(svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    return [svc.secgroups.view(g) for g in svc.secgroups.list(scope.project_id)]


@router.post(
    "/v1/secgroups",
    status_code=201,
    response_model=SecGroupOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def create_secgroup(body: SecGroupIn, svc: Svc, scope: Member) -> dict[str, object]:
    return svc.secgroups.view(svc.secgroups.create(body.name, scope.project_id))


@router.get(
    "/v1/secgroups/{secgroup}",
    response_model=SecGroupOut,
    openapi_extra={"x-gureum-role": "viewer"},
)
async def get_secgroup(secgroup: str, svc: Svc, scope: Viewer) -> dict[str, object]:
    return svc.secgroups.view(svc.secgroups.get(secgroup, scope.project_id))


@router.delete(
    "/v1/secgroups/{secgroup}",
    response_model=SecGroupOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def delete_secgroup(secgroup: str, svc: Svc, scope: Member) -> dict[str, object]:
    group = await svc.secgroups.delete(secgroup, scope.project_id)
    return {
        "id": group.id,
        "name": group.name,
        "rules": [],
        "instances": 0,
        "created_at": group.created_at,
    }


@router.post(
    "/v1/secgroups/{secgroup}/rules",
    status_code=201,
    response_model=SecGroupOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def add_rule(secgroup: str, body: RuleIn, svc: Svc, scope: Member) -> dict[str, object]:
    """Applies at once to running VMs (their firewall is swapped atomically)."""
    await svc.secgroups.add_rule(
        secgroup,
        body.ingress,
        cidr=body.from_cidr,
        source_group=body.from_group,
        project_id=scope.project_id,
    )
    return svc.secgroups.view(svc.secgroups.get(secgroup, scope.project_id))


@router.delete(
    "/v1/secgroups/{secgroup}/rules/{rule}",
    response_model=SecGroupOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def remove_rule(secgroup: str, rule: str, svc: Svc, scope: Member) -> dict[str, object]:
    await svc.secgroups.remove_rule(secgroup, rule, scope.project_id)
    return svc.secgroups.view(svc.secgroups.get(secgroup, scope.project_id))


@router.get(
    "/v1/instances/{ref}/nics",
    response_model=list[NicOut],
    openapi_extra={"x-gureum-role": "viewer"},
)
async def list_nics(ref: str, svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    return svc.nics.list(ref, scope.project_id)


@router.post(
    "/v1/instances/{ref}/nics",
    status_code=201,
    response_model=NicOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def add_nic(ref: str, body: NicIn, svc: Svc, scope: Member) -> dict[str, object]:
    """Hot-plugged when the VM runs (``applied: live``), else from the next boot."""
    return await svc.nics.add(ref, body.network, scope.project_id)


@router.delete(
    "/v1/instances/{ref}/nics/{nic}",
    response_model=NicOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def remove_nic(ref: str, nic: str, svc: Svc, scope: Member) -> dict[str, object]:
    """By NIC id, MAC, address or network name."""
    return await svc.nics.remove(ref, nic, scope.project_id)


@router.get(
    "/v1/instances/{ref}/forwards",
    response_model=list[ForwardOut],
    openapi_extra={"x-gureum-role": "viewer"},
)
async def list_forwards(ref: str, svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    inst = svc.instances.get(ref, scope.project_id)
    return [svc.forwards.view(f) for f in svc.forwards.list(inst.id)]


@router.post(
    "/v1/instances/{ref}/forwards",
    status_code=201,
    response_model=ForwardOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def add_forward(ref: str, body: ForwardIn, svc: Svc, scope: Member) -> dict[str, object]:
    """A host loopback port relayed to a port of the instance's first NIC."""
    inst = svc.instances.get(ref, scope.project_id)
    return svc.forwards.view(await svc.forwards.add(inst.id, body.mapping))


@router.delete(
    "/v1/instances/{ref}/forwards/{forward}",
    response_model=ForwardOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def remove_forward(ref: str, forward: str, svc: Svc, scope: Member) -> dict[str, object]:
    """By id, host port or ADDRESS:PORT."""
    inst = svc.instances.get(ref, scope.project_id)
    fwd = await svc.forwards.remove(inst.id, forward)
    return {
        "id": fwd.id,
        "instance": inst.name,
        "host": f"{fwd.host_address}:{fwd.host_port}",
        "guest": f":{fwd.guest_port}",
        "host_address": fwd.host_address,
        "host_port": fwd.host_port,
        "guest_port": fwd.guest_port,
        "created_at": fwd.created_at,
    }
