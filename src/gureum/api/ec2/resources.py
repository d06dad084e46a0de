"""EC2 actions on what surrounds instances: key pairs, security groups and their ingress rules,
VPCs and subnets (a read-only view of gureum's networks), volumes (each instance's root disk)
and their snapshots (gureum's disk snapshots). Each maps onto gureum's own services."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gureum.api.ec2 import ids
from gureum.api.ec2.actions import OP_TIMEOUT_S, Context, image_named
from gureum.api.ec2.errors import Ec2Error, from_gureum, invalid
from gureum.errors import Conflict, GureumError
from gureum.model.image import Image
from gureum.model.instance import Instance
from gureum.model.network import Rule
from gureum.model.snapshot import Snapshot
from gureum.model.sshkeys import KeyPair
from gureum.model.tenancy import Role
from gureum.service.secgroups import parse_ingress

ISO = "%Y-%m-%dT%H:%M:%S.000Z"
T = TypeVar("T")


def _iso(at: float) -> str:
    return time.strftime(ISO, time.gmtime(at))


async def _guarded(coro: Awaitable[T], not_found: str) -> T:
    try:
        return await coro
    except GureumError as exc:
        raise from_gureum(exc, not_found) from None


def _sync(fn: Callable[..., T], not_found: str, *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except GureumError as exc:
        raise from_gureum(exc, not_found) from None


# -- key pairs ------------------------------------------------------------------------------------
def _pair_xml(pair: KeyPair) -> dict[str, Any]:
    return {
        "keyPairId": ids.to_ec2("key", pair.id),
        "keyName": pair.name,
        "keyFingerprint": pair.fingerprint,
        "keyType": pair.public_key.split()[0].removeprefix("ssh-"),
        "createTime": _iso(pair.created_at),
    }


async def describe_key_pairs(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    names = set(ctx.params.list("KeyName"))
    pairs = ctx.svc.keypairs.list(ctx.project_id)
    missing = names - {p.name for p in pairs}
    if missing:
        raise Ec2Error(
            "InvalidKeyPair.NotFound", f"The key pair '{sorted(missing)[0][:60]}' does not exist"
        )
    return {"keySet": [_pair_xml(p) for p in pairs if not names or p.name in names]}


async def import_key_pair(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    name = ctx.params.required("KeyName")
    try:
        material = base64.b64decode(ctx.params.required("PublicKeyMaterial"), validate=True)
        key = material.decode()
    except (binascii.Error, UnicodeDecodeError):
        raise invalid(
            "PublicKeyMaterial", "...", "It must be base64 of an OpenSSH public key."
        ) from None
    pair = _sync(ctx.svc.keypairs.add, "InvalidKeyPair.NotFound", name, key, ctx.project_id)
    return _pair_xml(pair)


async def create_key_pair(ctx: Context) -> dict[str, Any]:
    """A new ed25519 key pair: the public half kept, the private half answered once (EC2's
    KeyMaterial, OpenSSH format) and never kept."""
    ctx.need(Role.MEMBER)
    name = ctx.params.required("KeyName")
    kind = ctx.params.get("KeyType") or "ed25519"
    if kind != "ed25519":
        raise invalid("KeyType", kind[:20], "Only ed25519 key pairs are made here (import others).")
    private = ed25519.Ed25519PrivateKey.generate()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    pair = _sync(
        ctx.svc.keypairs.add, "InvalidKeyPair.NotFound", name, f"{public} {name}", ctx.project_id
    )
    material = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return {**_pair_xml(pair), "keyMaterial": material}


async def delete_key_pair(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    ref = ctx.params.get("KeyName")
    if not ref and ctx.params.get("KeyPairId"):
        ref = ids.to_gureum(ctx.params.get("KeyPairId") or "", "key")
    if not ref:
        raise Ec2Error("MissingParameter", "The request must contain the parameter KeyName")
    _sync(ctx.svc.keypairs.delete, "InvalidKeyPair.NotFound", ref, ctx.project_id)
    return {"return": True}


# -- security groups -------------------------------------------------------------------------------
def _group_ref(ctx: Context) -> str:
    group_id = ctx.params.get("GroupId")
    if group_id:
        return ids.parse(group_id, "sg")
    return ctx.params.required("GroupName")


def _permissions(rules: list[Rule], names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        proto = {"all": "-1"}.get(r.protocol, r.protocol)
        item: dict[str, Any] = {"ipProtocol": proto}
        if r.port_from is not None:
            item |= {"fromPort": r.port_from, "toPort": r.port_to}
        elif r.protocol == "icmp":
            item |= {"fromPort": -1, "toPort": -1}
        if r.cidr:
            item["ipRanges"] = [{"cidrIp": r.cidr}]
        if r.source_group:
            item["groups"] = [
                {
                    "groupId": ids.to_ec2("sg", r.source_group),
                    "groupName": names.get(r.source_group, ""),
                }
            ]
        out.append(item)
    return out


async def describe_security_groups(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    groups = ctx.svc.secgroups.list(ctx.project_id)
    names = {g.id: g.name for g in groups}
    wanted_ids = {ids.to_gureum(g, "sg") for g in ctx.params.list("GroupId")}
    wanted_names = set(ctx.params.list("GroupName"))
    chosen = [
        g
        for g in groups
        if (not wanted_ids and not wanted_names) or g.id in wanted_ids or g.name in wanted_names
    ]
    if len(chosen) < len(wanted_ids | wanted_names):
        raise Ec2Error("InvalidGroup.NotFound", "The security group does not exist")
    return {
        "securityGroupInfo": [
            {
                "ownerId": ctx.project_id,
                "groupId": ids.to_ec2("sg", g.id),
                "groupName": g.name,
                "groupDescription": g.name,
                "ipPermissions": _permissions(g.rules, names),
                "ipPermissionsEgress": [
                    {"ipProtocol": "-1", "ipRanges": [{"cidrIp": "0.0.0.0/0"}]}
                ],
            }
            for g in chosen
        ]
    }


async def create_security_group(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    name = ctx.params.required("GroupName")
    group = _sync(ctx.svc.secgroups.create, "InvalidGroup.NotFound", name, ctx.project_id)
    return {"return": True, "groupId": ids.to_ec2("sg", group.id)}


async def delete_security_group(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    await _guarded(
        ctx.svc.secgroups.delete(_group_ref(ctx), ctx.project_id), "InvalidGroup.NotFound"
    )
    return {"return": True}


def _ingress_specs(ctx: Context) -> list[tuple[str, str | None, str | None]]:
    """(``tcp/80``, CIDR, source group id) for each ``IpPermissions.N`` range, or the flat
    ``IpProtocol``/``FromPort``/``ToPort``/``CidrIp`` form."""
    p = ctx.params
    out: list[tuple[str, str | None, str | None]] = []
    perms = {k.split(".")[1] for k in p.values if k.startswith("IpPermissions.")}
    flat = []
    if p.get("IpProtocol"):  # the older, flat form
        flat.append(("", p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort")))
    for index in sorted(perms, key=lambda i: int(i) if i.isdigit() else 0):
        base = f"IpPermissions.{index}"
        flat.append(
            (base, p.get(f"{base}.IpProtocol"), p.get(f"{base}.FromPort"), p.get(f"{base}.ToPort"))
        )
    for base, proto, low, high in flat:
        proto = {"-1": "all"}.get(proto or "", (proto or "").lower())
        ported = proto not in ("all", "icmp") and low not in (None, "-1")
        spec = f"{proto}/{low}-{high or low}" if ported else proto
        if base:
            cidrs = [
                v
                for k, v in p.values.items()
                if k.startswith(f"{base}.IpRanges.") and k.endswith(".CidrIp")
            ]
            groups = [
                v
                for k, v in p.values.items()
                if k.startswith(f"{base}.Groups.") and k.endswith(".GroupId")
            ]
        else:
            cidrs, groups = [p.get("CidrIp") or ""] if p.get("CidrIp") else [], []
        if not cidrs and not groups:
            raise invalid(
                "IpPermissions", spec, "Give IpRanges or Groups (where traffic may come from)."
            )
        out += [(spec, c, None) for c in cidrs]
        for g in groups:
            out.append((spec, None, ids.parse(g, "sg")))
    if not out:
        raise Ec2Error("MissingParameter", "The request must contain the parameter IpPermissions")
    return out


async def authorize_security_group_ingress(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    ref = _group_ref(ctx)
    rules = []
    for spec, cidr, source in _ingress_specs(ctx):
        rule = await _guarded(
            ctx.svc.secgroups.add_rule(
                ref,
                spec,
                cidr=cidr,
                source_group=source,
                project_id=ctx.project_id,
            ),
            "InvalidGroup.NotFound",
        )
        rules.append(
            {
                "securityGroupRuleId": "sgr-" + ids.PAD + rule.id.split("-", 1)[1],
                "groupId": ids.to_ec2("sg", rule.secgroup_id),
                "isEgress": False,
                "ipProtocol": rule.protocol,
            }
        )
    return {"return": True, "securityGroupRuleSet": rules}


async def revoke_security_group_ingress(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    group = _sync(ctx.svc.secgroups.get, "InvalidGroup.NotFound", _group_ref(ctx), ctx.project_id)
    for spec, cidr, source in _ingress_specs(ctx):
        proto, first, last = _sync(parse_ingress, "InvalidParameterValue", spec)
        shape = (proto, first, last)
        match = [
            r
            for r in group.rules
            if (r.protocol, r.port_from, r.port_to) == shape
            and (cidr is None or r.cidr == cidr)
            and r.source_group == source
        ]
        if not match:
            raise Ec2Error(
                "InvalidPermission.NotFound",
                "The specified rule does not exist in this security group.",
            )
        for r in match:
            await _guarded(
                ctx.svc.secgroups.remove_rule(group.id, r.id, ctx.project_id),
                "InvalidGroup.NotFound",
            )
    return {"return": True}


# -- VPCs and subnets: gureum's networks ----------------------------------------------------------
async def describe_vpcs(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    return {
        "vpcSet": [
            {
                "vpcId": ids.to_ec2("vpc", n.id),
                "cidrBlock": n.subnet,
                "state": "available",
                "isDefault": n.name == "default",
                "ownerId": ctx.project_id,
                "tagSet": [{"key": "Name", "value": n.name}],
            }
            for n in ctx.svc.networks.list(ctx.project_id)
        ]
    }


async def describe_subnets(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    wanted = set(ctx.params.list("SubnetId"))
    return {
        "subnetSet": [
            {
                "subnetId": ids.to_ec2("subnet", n.id),
                "vpcId": ids.to_ec2("vpc", n.id),
                "cidrBlock": n.subnet,
                "state": "available",
                "availabilityZone": ctx.zone,
                "defaultForAz": n.name == "default",
                "mapPublicIpOnLaunch": False,
                "ownerId": ctx.project_id,
                "tagSet": [{"key": "Name", "value": n.name}],
            }
            for n in ctx.svc.networks.list(ctx.project_id)
            if not wanted or ids.to_ec2("subnet", n.id) in wanted
        ]
    }


# -- volumes (each instance's root disk) and snapshots ---------------------------------------------
async def describe_volumes(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    return {
        "volumeSet": [
            {
                "volumeId": ids.to_ec2("vol", i.id),
                "size": max(1, round(i.spec.disk_bytes / (1 << 30))),
                "availabilityZone": ctx.zone,
                "status": "in-use",
                "createTime": _iso(i.created_at),
                "volumeType": "gp3",
                "encrypted": False,
                "attachmentSet": [
                    {
                        "volumeId": ids.to_ec2("vol", i.id),
                        "instanceId": ids.to_ec2("i", i.id),
                        "device": "/dev/vda",
                        "status": "attached",
                        "deleteOnTermination": True,
                    }
                ],
            }
            for i in ctx.svc.instances.list(ctx.project_id)
        ]
    }


def _snapshots(ctx: Context) -> list[tuple[Instance, Snapshot]]:
    """(instance, snapshot) of every instance of the project."""
    out = []
    for inst in ctx.svc.instances.list(ctx.project_id):
        out += [(inst, s) for s in ctx.svc.snapshots.list(inst.id, ctx.project_id)]
    return out


def _snapshot_xml(inst: Instance, snap: Snapshot) -> dict[str, Any]:
    return {
        "snapshotId": ids.to_ec2("snap", snap.id),
        "volumeId": ids.to_ec2("vol", inst.id),
        "status": "completed",
        "progress": "100%",
        "startTime": _iso(snap.created_at),
        "volumeSize": max(1, round(snap.disk_bytes / (1 << 30))),
        "description": snap.name,
        "ownerId": inst.project_id,
        "encrypted": False,
    }


async def create_snapshot(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    volume = ctx.params.required("VolumeId")
    instance_id = ids.parse(volume, "vol")
    name = f"snap-{secrets.token_hex(4)}"
    op = await _guarded(
        ctx.svc.snapshots.create(instance_id, name, project_id=ctx.project_id),
        "InvalidVolume.NotFound",
    )
    done = await ctx.svc.ops.finished(op.id, OP_TIMEOUT_S)
    if done.error is not None:
        raise Ec2Error("InvalidParameterValue", str(done.error.get("message", "failed")))
    inst, snap = ctx.svc.snapshots.get(instance_id, name, ctx.project_id)
    return _snapshot_xml(inst, snap)


async def describe_snapshots(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    wanted = set(ctx.params.list("SnapshotId"))
    found = [_snapshot_xml(i, s) for i, s in _snapshots(ctx)]
    if wanted - {f["snapshotId"] for f in found}:
        raise Ec2Error(
            "InvalidSnapshot.NotFound", f"The snapshot '{sorted(wanted)[0][:40]}' does not exist."
        )
    return {"snapshotSet": [f for f in found if not wanted or f["snapshotId"] in wanted]}


async def delete_snapshot(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    wanted = ctx.params.required("SnapshotId")
    for inst, snap in _snapshots(ctx):
        if ids.to_ec2("snap", snap.id) == wanted:
            await _guarded(
                ctx.svc.snapshots.delete(inst.id, snap.name, ctx.project_id),
                "InvalidSnapshot.NotFound",
            )
            return {"return": True}
    raise Ec2Error("InvalidSnapshot.NotFound", f"The snapshot '{wanted[:40]}' does not exist.")


# -- images ----------------------------------------------------------------------------------------
CATALOG_OWNER = "gureum"  # the owner id of the host's catalog; a project's images have its id


def _image_xml(image: Image | None, name: str, project_id: str | None) -> dict[str, Any]:
    """An image in EC2's shape; ``image`` None: one being made (``pending``)."""
    made = image.built_at if image else time.time()
    description = image.description if image else ""
    if image and not description:
        description = f"{image.name} {image.version} ({image.origin})"
    return {
        "imageId": ids.image_id(name),
        "name": name,
        "imageState": "available" if image else "pending",
        "imageOwnerId": project_id or CATALOG_OWNER,
        "isPublic": project_id is None,
        "architecture": "x86_64",
        "imageType": "machine",
        "rootDeviceType": "ebs",
        "rootDeviceName": "/dev/vda",
        "virtualizationType": "hvm",
        "hypervisor": "qemu",
        "description": description,
        "creationDate": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(made)),
    }


async def describe_images(ctx: Context) -> dict[str, Any]:
    """The host's catalog and the project's own images, those being made as ``pending``."""
    ctx.need(Role.VIEWER)
    p = ctx.params
    images = [_image_xml(i, i.name, i.project_id) for i in ctx.svc.images.list((ctx.project_id,))]
    images += [_image_xml(None, n, ctx.project_id) for n in ctx.svc.images.pending(ctx.project_id)]
    owners = {ctx.project_id if o == "self" else o for o in p.list("Owner")}
    filters = p.filters()
    unknown = set(filters) - {"image-id", "name", "state", "owner-id", "is-public"}
    if unknown:
        raise invalid("Filter", sorted(unknown)[0][:60],
                      "Filters: image-id, name, state, owner-id, is-public.")  # fmt: skip
    found = []
    for i in images:
        fields = {
            "image-id": i["imageId"],
            "name": i["name"],
            "state": i["imageState"],
            "owner-id": i["imageOwnerId"],
            "is-public": str(i["isPublic"]).lower(),
        }
        if owners and i["imageOwnerId"] not in owners:
            continue
        if all(any(fnmatch.fnmatchcase(fields[n], v) for v in vs) for n, vs in filters.items()):
            found.append(i)
    wanted = set(p.list("ImageId"))
    missing = wanted - {i["imageId"] for i in images}
    if missing:
        raise Ec2Error("InvalidAMIID.NotFound", f"The image id '{sorted(missing)}' does not exist")
    return {"imagesSet": [i for i in found if not wanted or i["imageId"] in wanted]}


async def create_image(ctx: Context) -> dict[str, Any]:
    """An image of the project's own from one of its instances, answered at once with its id:
    DescribeImages shows it ``pending`` until it is made. The instance is never rebooted
    (``NoReboot`` or not): its disk is copied through a snapshot taken with its filesystems
    frozen where its agent answers."""
    ctx.need(Role.MEMBER)
    p = ctx.params
    instance_id = ids.parse(p.required("InstanceId"), "i")
    name = p.required("Name")
    try:
        ctx.svc.images.check_new_name(name)
    except Conflict as exc:
        raise Ec2Error("InvalidAMIName.Duplicate", exc.message) from None
    except GureumError as exc:
        raise Ec2Error("InvalidAMIName.Malformed", exc.message) from None
    await _guarded(
        ctx.svc.capture.capture(instance_id, name, ctx.project_id, p.get("Description") or ""),
        "InvalidInstanceID.NotFound",
    )
    return {"imageId": ids.image_id(name)}


async def deregister_image(ctx: Context) -> dict[str, Any]:
    """Delete one of the project's own images (refused while instances use it); the host's
    catalog is its administrator's, through gureum's own API."""
    ctx.need(Role.MEMBER)
    image = image_named(ctx, ctx.params.required("ImageId"))
    if image.project_id is None:
        raise Ec2Error(
            "UnauthorizedOperation",
            f"You are not authorized to deregister {ids.image_id(image.name)}: it is the "
            "host's, not your project's",
            403,
        )
    await _guarded(ctx.svc.templates.delete_image(image.name), "InvalidAMIID.NotFound")
    return {"return": True}


# -- tags ------------------------------------------------------------------------------------------
def _tagged(ctx: Context) -> list[str]:
    """``ResourceId.N`` as gureum ids of the project's resources (another project's, or none:
    EC2's NotFound for its kind)."""
    known = {ec2: gureum for gureum, ec2 in ctx.resources().items()}
    known |= {ids.to_ec2("subnet", n.id): n.id for n in ctx.svc.networks.list(ctx.project_id)}
    out = []
    for ec2_id in ctx.params.list("ResourceId"):
        if ec2_id not in known:
            kind = ec2_id.split("-", 1)[0]
            code = {
                "i": "InvalidInstanceID",
                "sg": "InvalidGroup",
                "snap": "InvalidSnapshot",
                "vpc": "InvalidVpcID",
                "subnet": "InvalidSubnetID",
                "key": "InvalidKeyPair",
            }.get(kind, "InvalidID")
            raise Ec2Error(f"{code}.NotFound", f"The ID '{ec2_id[:40]}' does not exist")
        out.append(known[ec2_id])
    if not out:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ResourceId")
    return out


async def create_tags(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    resources = _tagged(ctx)
    ctx.svc.tags.prune(ctx.project_id, set(ctx.resources()))  # the tags of what is gone go
    tags = ctx.params.tags("")
    names = {i.id: i.name for i in ctx.svc.instances.list(ctx.project_id)}
    for resource in resources:
        if resource in names and tags.get("Name", names[resource]) != names[resource]:
            raise invalid(
                "Tag.Name",
                tags["Name"][:40],
                "An instance's Name is its gureum name, given at launch.",
            )
    _sync(
        ctx.svc.tags.add,
        "InvalidID",
        ctx.project_id,
        resources,
        {k: v for k, v in tags.items() if not (k == "Name" and set(resources) & set(names))},
    )
    return {"return": True}


async def delete_tags(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.MEMBER)
    resources = _tagged(ctx)
    wanted: dict[str, str | None] = {}
    for key, value in ctx.params.values.items():
        if key.startswith("Tag.") and key.endswith(".Key"):
            index = key[4:-4]
            wanted[value] = ctx.params.get(f"Tag.{index}.Value")
    ctx.svc.tags.remove(resources, wanted)
    return {"return": True}


async def describe_tags(ctx: Context) -> dict[str, Any]:
    ctx.need(Role.VIEWER)
    resources = ctx.resources()
    names = {i.id: i.name for i in ctx.svc.instances.list(ctx.project_id)}
    kinds = {
        "i": "instance",
        "sg": "security-group",
        "snap": "snapshot",
        "key": "key-pair",
        "vpc": "vpc",
    }
    rows = [(ec2, "Name", name) for gid, name in names.items() for ec2 in [resources[gid]]]
    for gid, tags in ctx.tags.items():
        if gid not in resources:
            continue  # gone (pruned at the next CreateTags)
        rows += [
            (resources[gid], k, v) for k, v in tags.items() if not (gid in names and k == "Name")
        ]
    filters = ctx.params.filters()
    items = []
    for ec2, key, value in sorted(rows):
        kind = kinds.get(ec2.split("-", 1)[0], "")
        fields = {"resource-id": ec2, "resource-type": kind, "key": key, "value": value}
        if all(fields.get(n, "\0") in v for n, v in filters.items()):
            items.append({"resourceId": ec2, "resourceType": kind, "key": key, "value": value})
    unknown = set(filters) - {"resource-id", "resource-type", "key", "value"}
    if unknown:
        raise invalid(
            "Filter", sorted(unknown)[0][:60], "Filters: resource-id, resource-type, key, value."
        )
    return {"tagSet": items}


ACTIONS = {
    "CreateTags": create_tags,
    "DeleteTags": delete_tags,
    "DescribeTags": describe_tags,
    "DescribeKeyPairs": describe_key_pairs,
    "ImportKeyPair": import_key_pair,
    "CreateKeyPair": create_key_pair,
    "DeleteKeyPair": delete_key_pair,
    "DescribeSecurityGroups": describe_security_groups,
    "CreateSecurityGroup": create_security_group,
    "DeleteSecurityGroup": delete_security_group,
    "AuthorizeSecurityGroupIngress": authorize_security_group_ingress,
    "RevokeSecurityGroupIngress": revoke_security_group_ingress,
    "DescribeVpcs": describe_vpcs,
    "DescribeSubnets": describe_subnets,
    "DescribeVolumes": describe_volumes,
    "CreateSnapshot": create_snapshot,
    "DescribeSnapshots": describe_snapshots,
    "DeleteSnapshot": delete_snapshot,
    "DescribeImages": describe_images,
    "CreateImage": create_image,
    "DeregisterImage": deregister_image,
}
