"""EC2 actions, each a thin mapping onto gureum's own services (no rule is written twice: the
launch, the quota, the admission, the state machine are the ones the CLI meets)."""

from __future__ import annotations

import base64
import binascii
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gureum.api.ec2 import ids
from gureum.api.ec2.errors import Ec2Error, from_gureum, invalid
from gureum.api.ec2.query import Params
from gureum.errors import GureumError
from gureum.model.image import Image
from gureum.model.tenancy import Role, Scope
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest

AVAILABILITY_ZONE_SUFFIX = "a"
TERMINATED_KEPT_S = 3600.0  # as EC2 shows a terminated instance for about an hour
# EC2 answers when the work is done for the few actions whose work is short (a snapshot, a resize).
OP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int


INSTANCE_TYPES = [
    InstanceType(n, c, m)
    for n, c, m in (
        ("t2.nano", 1, 512),
        ("t2.micro", 1, 1024),
        ("t2.small", 1, 2048),
        ("t3.nano", 2, 512),
        ("t3.micro", 2, 1024),
        ("t3.small", 2, 2048),
        ("t3.medium", 2, 4096),
        ("t3.large", 2, 8192),
        ("c5.large", 2, 4096),
        ("m5.large", 2, 8192),
        ("r5.large", 2, 16384),
    )
]
TYPES = {t.name: t for t in INSTANCE_TYPES}
STATES = {  # gureum state -> EC2 (code, name)
    "pending": (0, "pending"),
    "starting": (0, "pending"),
    "running": (16, "running"),
    "paused": (16, "running"),
    "stopping": (64, "stopping"),
    "stopped": (80, "stopped"),
    "crashed": (80, "stopped"),
    "error": (80, "stopped"),
}


def ec2_state(view: dict[str, Any]) -> tuple[int, str]:
    """EC2's (code, name) of an instance's gureum state (any other: stopped, as EC2 has no word
    for it). An instance whose host is unreachable keeps its last known state, as EC2 keeps an
    instance whose host is impaired ``running`` (DescribeInstanceStatus says ``impaired``)."""
    return STATES.get(str(view.get("last_state", view["state"])), (80, "stopped"))


def type_of(cpus: int, memory_mib: int) -> str:
    for t in INSTANCE_TYPES:
        if (t.vcpus, t.memory_mib) == (cpus, memory_mib):
            return t.name
    return f"gureum.c{cpus}m{memory_mib}"  # a shape no EC2 type names (launched by gureum's API)


@dataclass
class Context:
    """One request: who, in which project, and the service."""

    svc: Services
    scope: Scope
    region: str
    params: Params
    terminated: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def need(self, role: Role) -> None:
        try:
            self.svc.tenancy.require(self.scope, role)
        except GureumError as exc:
            raise Ec2Error(
                "UnauthorizedOperation",
                f"You are not authorized to perform this operation. ({exc.message})",
                403,
            ) from None
        if self.params.bool("DryRun"):
            raise Ec2Error(
                "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
            )

    @property
    def project_id(self) -> str:
        return self.scope.project_id

    @functools.cached_property
    def tags(self) -> dict[str, dict[str, str]]:
        """The project's tags by gureum id (one query; looked up by the ids at hand)."""
        return self.svc.tags.of(self.project_id)

    def resources(self) -> dict[str, str]:
        """Every taggable resource of the project: gureum id -> EC2 id."""
        svc, project = self.svc, self.project_id
        instances = svc.instances.list(project)
        out = {i.id: ids.to_ec2("i", i.id) for i in instances}
        out |= {g.id: ids.to_ec2("sg", g.id) for g in svc.secgroups.list(project)}
        out |= {k.id: ids.to_ec2("key", k.id) for k in svc.keypairs.list(project)}
        out |= {n.id: ids.to_ec2("vpc", n.id) for n in svc.networks.list(project)}
        for inst in instances:
            out |= {s.id: ids.to_ec2("snap", s.id) for s in svc.snapshots.list(inst.id, project)}
        return out

    @functools.cached_property
    def network_ids(self) -> dict[str, str]:
        """The project's networks' ids by name (a NIC's view names its network)."""
        return {n.name: n.id for n in self.svc.networks.list(self.project_id)}

    @property
    def zone(self) -> str:
        return self.region + AVAILABILITY_ZONE_SUFFIX


def _instance_xml(ctx: Context, view: dict[str, Any], state: str | None = None) -> dict[str, Any]:
    code, name = (48, "terminated") if state == "terminated" else ec2_state(view)
    nic = (view.get("nics") or [{}])[0]
    network = ctx.network_ids.get(nic.get("network", ""))
    return {
        "instanceId": ids.to_ec2("i", view["id"]),
        "imageId": ids.image_id(view["image"]),
        "instanceState": {"code": code, "name": name},
        "privateDnsName": view["name"],
        "dnsName": "",
        "reason": view.get("state_reason") or "",
        "amiLaunchIndex": 0,
        "instanceType": type_of(view["cpus"], view["memory_mib"]),
        "launchTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(view["created_at"])),
        "placement": {"availabilityZone": ctx.zone, "tenancy": "default"},
        "monitoring": {"state": "disabled"},
        "subnetId": ids.to_ec2("subnet", network) if network else None,
        "vpcId": ids.to_ec2("vpc", network) if network else None,
        "privateIpAddress": nic.get("ip") or None,
        "groupSet": [{"groupName": g} for g in view.get("secgroups", [])],
        "architecture": "x86_64",
        "rootDeviceType": "ebs",
        "rootDeviceName": "/dev/vda",
        "virtualizationType": "hvm",
        "blockDeviceMapping": [
            {
                "deviceName": "/dev/vda",
                "ebs": {
                    "volumeId": ids.to_ec2("vol", view["id"]),
                    "status": "attached",
                    "deleteOnTermination": True,
                },
            }
        ],
        "tagSet": [{"key": "Name", "value": view["name"]}]
        + [{"key": k, "value": v} for k, v in ctx.tags.get(view["id"], {}).items() if k != "Name"],
        "cpuOptions": {"coreCount": view["cpus"], "threadsPerCore": 1},
    }


def _views(ctx: Context) -> list[dict[str, Any]]:
    return ctx.svc.instances.views(ctx.svc.instances.list(ctx.project_id))


def _wanted_ids(ctx: Context) -> list[str]:
    """``InstanceId.N`` as gureum ids; a malformed or unknown one is EC2's NotFound."""
    out = []
    for ec2_id in ctx.params.list("InstanceId"):
        out.append(ids.parse(ec2_id, "i"))
    return out


def _matches(item: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    fields = {
        "instance-id": item["instanceId"],
        "instance-state-name": item["instanceState"]["name"],
        "instance-state-code": str(item["instanceState"]["code"]),
        "image-id": item["imageId"],
        "instance-type": item["instanceType"],
        "private-ip-address": item.get("privateIpAddress") or "",
        "subnet-id": item.get("subnetId") or "",
        "vpc-id": item.get("vpcId") or "",
        "availability-zone": item["placement"]["availabilityZone"],
    }
    for name, values in filters.items():
        if name.startswith("tag:"):
            have = {t["value"] for t in item["tagSet"] if t["key"] == name[4:]}
        elif name == "tag-key":
            have = {t["key"] for t in item["tagSet"]}
        elif name in fields:
            have = {fields[name]}
        else:
            raise invalid("Filter", name[:60], f"The filter '{name[:60]}' is not supported.")
        if not have & set(values):
            return False
    return True


def _page(ctx: Context, items: list[Any]) -> tuple[list[Any], str | None]:
    """``MaxResults`` (5 to 1000) and ``NextToken`` (an offset, as given back)."""
    limit = ctx.params.int("MaxResults", 1000, 5, 1000)
    token = ctx.params.get("NextToken") or "0"
    if not token.isdigit():
        raise invalid("NextToken", token[:40], "It was not given by this service.")
    start = int(token)
    page = items[start : start + limit]
    return page, str(start + limit) if start + limit < len(items) else None


async def describe_instances(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    wanted = _wanted_ids(ctx)
    views = {v["id"]: v for v in _views(ctx)}
    now = time.time()
    gone = {k: v for k, (at, v) in ctx.terminated.items() if now - at < TERMINATED_KEPT_S}
    missing = [i for i in wanted if i not in views and i not in gone]
    if missing:
        raise Ec2Error(
            "InvalidInstanceID.NotFound",
            f"The instance IDs '{', '.join(ids.to_ec2('i', m) for m in missing)}' do not exist",
        )
    items = [_instance_xml(ctx, v) for k, v in views.items() if not wanted or k in wanted]
    items += [
        _instance_xml(ctx, v, "terminated")
        for k, v in gone.items()
        if (not wanted or k in wanted) and k not in views
    ]
    filters = ctx.params.filters()
    items = [i for i in items if _matches(i, filters)]
    page, token = _page(ctx, items)
    reservations = [
        {
            "reservationId": "r-" + i["instanceId"][2:],
            "ownerId": ctx.scope.project.id,
            "groupSet": [],
            "instancesSet": [i],
        }
        for i in page
    ]
    return {"reservationSet": reservations, "nextToken": token}


async def describe_instance_status(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    wanted = _wanted_ids(ctx)
    every = ctx.params.bool("IncludeAllInstances")
    out = []
    for view in _views(ctx):
        if wanted and view["id"] not in wanted:
            continue
        code, name = ec2_state(view)
        if name != "running" and not every:
            continue
        ok = "ok" if name == "running" else "not-applicable"
        if "last_state" in view:  # its host is unreachable
            ok = "impaired"
        out.append(
            {
                "instanceId": ids.to_ec2("i", view["id"]),
                "availabilityZone": ctx.zone,
                "instanceState": {"code": code, "name": name},
                "systemStatus": {"status": ok},
                "instanceStatus": {"status": ok},
            }
        )
    page, token = _page(ctx, out)
    return {"instanceStatusSet": page, "nextToken": token}


def image_named(ctx: Context, ami: str) -> Image:
    """The image of an ``ami-`` id among those the caller's project sees."""
    for image in ctx.svc.images.list((ctx.project_id,)):
        if ids.image_id(image.name) == ami:
            return image
    raise Ec2Error("InvalidAMIID.NotFound", f"The image id '[{ami[:40]}]' does not exist")


def _network(ctx: Context, subnet: str | None) -> tuple[str, ...]:
    if not subnet:
        return ()
    return (ids.parse(subnet, "subnet"),)


def _groups(ctx: Context) -> tuple[str, ...]:
    named = ctx.params.list("SecurityGroup")
    for sg in ctx.params.list("SecurityGroupId"):
        named.append(ids.parse(sg, "sg"))
    return tuple(named)


async def run_instances(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    ctx.need(Role.MEMBER)
    image = image_named(ctx, p.required("ImageId")).name
    kind = p.get("InstanceType") or "t2.micro"
    if kind not in TYPES:
        raise invalid("InstanceType", kind[:40], f"Supported: {', '.join(TYPES)}.")
    low, high = p.int("MinCount", 1, 1, 100), p.int("MaxCount", 1, 1, 100)
    if low > high:
        raise invalid("MinCount", low, "MinCount must not exceed MaxCount.")
    user_data = None
    if p.get("UserData"):
        try:
            user_data = base64.b64decode(p.required("UserData"), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid("UserData", "...", "It must be base64 of UTF-8 text.") from None
    name = p.tags("instance").get("Name") or f"ec2-{secrets.token_hex(4)}"
    try:
        ctx.svc.tags.check(p.tags("instance"))
    except GureumError as exc:
        raise from_gureum(exc) from None
    key = p.get("KeyName")
    launched: list[dict[str, Any]] = []
    for n in range(high):
        req = LaunchRequest(
            name=name if high == 1 else f"{name}-{n + 1}",
            image=image,
            cpus=TYPES[kind].vcpus,
            memory_mib=TYPES[kind].memory_mib,
            networks=_network(ctx, p.get("SubnetId")),
            secgroups=_groups(ctx),
            user_data=user_data,
            keypairs=(key,) if key else (),
        )
        try:
            inst, _ = await ctx.svc.templates.launch(req, ctx.project_id)
        except GureumError as exc:
            if n < low:  # fewer than MinCount: EC2 launches none; so are they taken back
                for made in launched:
                    await ctx.svc.instances.delete(
                        made["id"], force=True, project_id=ctx.project_id
                    )
                raise from_gureum(exc, "InvalidParameterValue") from None
            break
        others = {k: v for k, v in p.tags("instance").items() if k != "Name"}
        if others:
            try:
                ctx.svc.tags.add(ctx.project_id, [inst.id], others)
            except GureumError as exc:
                await ctx.svc.instances.delete(inst.id, force=True, project_id=ctx.project_id)
                raise from_gureum(exc) from None
        launched.append(ctx.svc.instances.view(inst))
    return {
        "reservationId": "r-" + secrets.token_hex(8) + "0",
        "ownerId": ctx.scope.project.id,
        "groupSet": [],
        "instancesSet": [_instance_xml(ctx, v) for v in launched],
    }


async def _each(
    ctx: Context, act: Callable[[str], Awaitable[object]], state_after: str
) -> list[dict[str, Any]]:
    """Apply ``act`` to each ``InstanceId.N``; their state changes, as EC2 answers them."""
    ctx.need(Role.MEMBER)
    wanted = _wanted_ids(ctx)
    if not wanted:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    views = {v["id"]: v for v in _views(ctx)}
    missing = [i for i in wanted if i not in views]
    if missing:
        raise Ec2Error(
            "InvalidInstanceID.NotFound",
            f"The instance IDs '{', '.join(ids.to_ec2('i', m) for m in missing)}' do not exist",
        )
    changes = []
    for gureum_id in wanted:
        before = ec2_state(views[gureum_id])
        try:
            await act(gureum_id)
        except GureumError as exc:
            raise from_gureum(exc, "InvalidInstanceID.NotFound") from None
        code = {"stopping": 64, "pending": 0, "shutting-down": 32}[state_after]
        changes.append(
            {
                "instanceId": ids.to_ec2("i", gureum_id),
                "currentState": {"code": code, "name": state_after},
                "previousState": {"code": before[0], "name": before[1]},
            }
        )
    return changes


async def start_instances(ctx: Context) -> dict[str, Any]:
    return {
        "instancesSet": await _each(
            ctx, lambda i: ctx.svc.instances.start(i, ctx.project_id), "pending"
        )
    }


async def stop_instances(ctx: Context) -> dict[str, Any]:
    return {
        "instancesSet": await _each(
            ctx, lambda i: ctx.svc.instances.stop(i, ctx.project_id), "stopping"
        )
    }


async def reboot_instances(ctx: Context) -> dict[str, Any]:
    await _each(ctx, lambda i: ctx.svc.instances.restart(i, ctx.project_id), "pending")
    return {"return": True}


async def terminate_instances(ctx: Context) -> dict[str, Any]:
    views = {v["id"]: v for v in _views(ctx)}

    async def terminate(instance_id: str) -> None:
        await ctx.svc.instances.delete(instance_id, force=True, project_id=ctx.project_id)
        ctx.terminated[instance_id] = (time.time(), views[instance_id])

    return {"instancesSet": await _each(ctx, terminate, "shutting-down")}


async def modify_instance_attribute(ctx: Context) -> dict[str, Any]:
    """The instance type of a stopped instance (EC2's rule; gureum's resize does the rest)."""
    ctx.need(Role.MEMBER)
    wanted = ids.to_gureum(ctx.params.required("InstanceId"), "i")
    kind = ctx.params.get("InstanceType.Value") or (
        ctx.params.get("Value") if ctx.params.get("Attribute") == "instanceType" else None
    )
    if wanted is None or kind is None:
        why = "Only InstanceType (of a stopped instance) can be modified here."
        raise Ec2Error("InvalidParameterCombination", why)
    if kind not in TYPES:
        raise invalid("InstanceType", kind[:40], f"Supported: {', '.join(TYPES)}.")
    try:
        inst = ctx.svc.instances.get(wanted, ctx.project_id)
        if inst.state.value not in ("stopped", "crashed", "error"):
            raise Ec2Error(
                "IncorrectInstanceState",
                f"The instance '{ids.to_ec2('i', inst.id)}' is not in the 'stopped' state.",
            )
        op = await ctx.svc.resize.resize(
            inst.id,
            cpus=TYPES[kind].vcpus,
            memory_mib=TYPES[kind].memory_mib,
            project_id=ctx.project_id,
        )
        done = await ctx.svc.ops.finished(op.id, OP_TIMEOUT_S)
    except GureumError as exc:
        raise from_gureum(exc, "InvalidInstanceID.NotFound") from None
    if done.error is not None:
        raise Ec2Error("InvalidParameterValue", done.error.get("message", "the resize failed"))
    return {"return": True}


async def describe_instance_types(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    wanted = set(ctx.params.list("InstanceType"))
    unknown = wanted - set(TYPES)
    if unknown:
        raise invalid("InstanceType", ", ".join(sorted(unknown))[:60], "No such type here.")
    return {
        "instanceTypeSet": [
            {
                "instanceType": t.name,
                "currentGeneration": True,
                "hypervisor": "nitro",
                "vCpuInfo": {
                    "defaultVCpus": t.vcpus,
                    "defaultCores": t.vcpus,
                    "defaultThreadsPerCore": 1,
                },
                "memoryInfo": {"sizeInMiB": t.memory_mib},
                "processorInfo": {"supportedArchitectures": ["x86_64"]},
            }
            for t in INSTANCE_TYPES
            if not wanted or t.name in wanted
        ]
    }


async def describe_regions(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    return {
        "regionInfo": [
            {
                "regionName": ctx.region,
                "regionEndpoint": "this service",
                "optInStatus": "opt-in-not-required",
            }
        ]
    }


async def describe_availability_zones(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    return {
        "availabilityZoneInfo": [
            {
                "zoneName": ctx.zone,
                "zoneState": "available",
                "regionName": ctx.region,
                "zoneId": ctx.zone,
            }
        ]
    }


ACTIONS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "DescribeInstances": describe_instances,
    "DescribeInstanceStatus": describe_instance_status,
    "RunInstances": run_instances,
    "StartInstances": start_instances,
    "StopInstances": stop_instances,
    "RebootInstances": reboot_instances,
    "TerminateInstances": terminate_instances,
    "ModifyInstanceAttribute": modify_instance_attribute,
    "DescribeInstanceTypes": describe_instance_types,
    "DescribeRegions": describe_regions,
    "DescribeAvailabilityZones": describe_availability_zones,
}
