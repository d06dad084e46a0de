"""The EC2 Query API on a fake host: requests signed by botocore's own signer (as boto3 and the
AWS CLI sign them), answers parsed by botocore's own EC2 parser; the signature checks (a wrong
secret, a tampered body, an old date, an expired presigned URL, a revoked key), each caller's
project only, roles, DryRun, and the launch mapped onto gureum's own."""

from __future__ import annotations

import base64
import time
from urllib.parse import urlencode

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.parsers import create_parser
from fastapi.testclient import TestClient

from gureum.api.app import create_app
from gureum.api.ec2 import ids
from gureum.model.tenancy import Role
from gureum.service.tenancy import SUPERUSER
from tests.unit.fakeworld import fake_services
from tests.waiting import wait_for

URL = "https://testserver/ec2"
EC2_MODEL = ServiceModel(Loader().load_service_model("ec2", "service-2"), "ec2")
PARSER = create_parser("ec2")


class Caller:
    """One access key, signing as boto3 does."""

    def __init__(self, client: TestClient, key: str, secret: str) -> None:
        self.client, self.key, self.secret = client, key, secret

    def raw(
        self,
        action: str,
        params: dict[str, str] | None = None,
        *,
        secret: str | None = None,
        when: float | None = None,
        tamper: bool = False,
    ):
        body = urlencode({"Action": action, "Version": "2016-11-15", **(params or {})})
        request = AWSRequest(
            method="POST",
            url=URL,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        signer = SigV4Auth(Credentials(self.key, secret or self.secret), "ec2", "gureum-1")
        if when is not None:
            request.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
            signer._modify_request_before_signing(request)
            request.headers["X-Amz-Date"] = request.context["timestamp"]
            canonical = signer.canonical_request(request)
            sig = signer.signature(signer.string_to_sign(request, canonical), request)
            signer._inject_signature_to_request(request, sig)
        else:
            signer.add_auth(request)
        data = body + ("&InstanceType=t3.large" if tamper else "")
        return self.client.post("/ec2", content=data, headers=dict(request.headers.items()))

    def call(self, action: str, params: dict[str, str] | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
        resp = self.raw(action, params, **kw)
        operation = EC2_MODEL.operation_model(action)
        parsed = PARSER.parse(
            {"body": resp.content, "headers": dict(resp.headers), "status_code": resp.status_code},
            operation.output_shape,
        )
        parsed["status"] = resp.status_code
        return parsed


@pytest.fixture
def world(tmp_path):
    svc, _ = fake_services(tmp_path, ("tiny",))
    t = svc.tenancy
    team_a, team_b = t.create_project("team-a", {}), t.create_project("team-b", {})
    keys = {}
    for name, project, role in (
        ("alice", team_a, Role.MEMBER),
        ("vera", team_a, Role.VIEWER),
        ("bob", team_b, Role.MEMBER),
    ):
        user = t.create_user(name)
        t.store.set_role(project.id, user.id, role)
        token, secret = t.create_token(SUPERUSER, name, "sdk", aws_project=project.name)
        keys[name] = (token, secret)
    with TestClient(create_app(svc, "tcp"), base_url="https://testserver") as client:
        callers = {n: Caller(client, tok.access_key_id, sec) for n, (tok, sec) in keys.items()}
        yield svc, callers, keys
    svc.close()


def run(caller: Caller, **params: str) -> dict:  # type: ignore[type-arg]
    image = ids.image_id("tiny")
    return caller.call(
        "RunInstances",
        {"ImageId": image, "MinCount": "1", "MaxCount": "1", "InstanceType": "t2.micro", **params},
    )


def test_run_describe_stop_terminate_through_botocores_parser(world):
    svc, callers, _ = world
    alice = callers["alice"]
    user_data = base64.b64encode(b"#cloud-config\nhostname: x\n").decode()
    named = {
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "Name",
        "TagSpecification.1.Tag.1.Value": "web1",
    }
    made = run(alice, UserData=user_data, **named)
    assert made["status"] == 200, made
    ec2_id = made["Instances"][0]["InstanceId"]
    assert len(ec2_id) == 19 and ec2_id.startswith("i-")
    inst = svc.instances.get("web1", svc.tenancy.scope(SUPERUSER, "team-a").project_id)
    assert ids.to_ec2("i", inst.id) == ec2_id
    assert (inst.spec.cpus, inst.spec.memory_mib) == (1, 1024)  # t2.micro
    assert inst.user_data == "#cloud-config\nhostname: x\n"
    seen = alice.call("DescribeInstances", {"InstanceId.1": ec2_id})
    (only,) = seen["Reservations"][0]["Instances"]
    assert only["InstanceType"] == "t2.micro" and only["ImageId"] == ids.image_id("tiny")
    assert {"Key": "Name", "Value": "web1"} in only["Tags"]
    filtered = alice.call(
        "DescribeInstances", {"Filter.1.Name": "instance-state-name", "Filter.1.Value.1": "stopped"}
    )
    assert filtered["Reservations"] == []
    stopped = alice.call("StopInstances", {"InstanceId.1": ec2_id})
    assert stopped["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    gone = alice.call("TerminateInstances", {"InstanceId.1": ec2_id})
    assert gone["TerminatingInstances"][0]["CurrentState"]["Name"] == "shutting-down"
    # Shown as terminated for a while (boto3's instance_terminated waiter looks for it).
    after = alice.call("DescribeInstances", {"InstanceId.1": ec2_id})
    assert after["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    assert svc.instances.list() == []


def test_pagination_and_unknown_ids(world):
    _, callers, _ = world
    alice = callers["alice"]
    for n in range(7):
        run(
            alice,
            **{
                "TagSpecification.1.ResourceType": "instance",
                "TagSpecification.1.Tag.1.Key": "Name",
                "TagSpecification.1.Tag.1.Value": f"w{n}",
            },
        )
    first = alice.call("DescribeInstances", {"MaxResults": "5"})
    assert len(first["Reservations"]) == 5 and first["NextToken"]
    rest = alice.call("DescribeInstances", {"MaxResults": "5", "NextToken": first["NextToken"]})
    assert len(rest["Reservations"]) == 2 and "NextToken" not in rest
    missing = alice.call("DescribeInstances", {"InstanceId.1": "i-00000aaaaaaaaaaaa"})
    assert missing["status"] == 400
    assert missing["Error"]["Code"] == "InvalidInstanceID.NotFound"


@pytest.mark.parametrize(
    "how, code",
    [
        ({"secret": "x" * 40}, "AuthFailure"),
        ({"tamper": True}, "AuthFailure"),
        ({"when": time.time() - 20 * 60}, "RequestExpired"),
    ],
)
def test_bad_signatures_are_refused_and_nothing_is_done(world, how, code):
    svc, callers, _ = world
    launch = {"ImageId": ids.image_id("tiny"), "MinCount": "1", "MaxCount": "1"}
    resp = callers["alice"].call("RunInstances", launch, **how)
    assert resp["Error"]["Code"] == code, resp
    assert svc.instances.list() == []


def test_a_presigned_url_works_until_it_expires(world):
    _, callers, _ = world
    alice = callers["alice"]
    query = urlencode({"Action": "DescribeRegions", "Version": "2016-11-15"})

    def presigned(when: float, expires: int) -> str:
        request = AWSRequest(method="GET", url=f"{URL}?{query}")
        request.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
        SigV4QueryAuth(
            Credentials(alice.key, alice.secret), "ec2", "gureum-1", expires=expires
        )._modify_request_before_signing(request)
        signer = SigV4QueryAuth(Credentials(alice.key, alice.secret), "ec2", "gureum-1", expires)
        canonical = signer.canonical_request(request)
        sig = signer.signature(signer.string_to_sign(request, canonical), request)
        return request.url.replace("https://testserver", "") + f"&X-Amz-Signature={sig}"

    ok = alice.client.get(presigned(time.time(), 300))
    assert ok.status_code == 200 and b"gureum-1" in ok.content
    late = alice.client.get(presigned(time.time() - 600, 300))
    assert late.status_code == 400 and b"RequestExpired" in late.content


def test_a_revoked_key_is_refused_and_audited(world):
    svc, callers, keys = world
    svc.tenancy.revoke(SUPERUSER, keys["alice"][0].id)
    assert callers["alice"].call("DescribeInstances")["Error"]["Code"] == "AuthFailure"
    (refusal,) = [e for e in svc.tenancy.audit(limit=10) if e["action"].startswith("POST /ec2")]
    assert refusal["result"] == 401 and "signature refused" in refusal["detail"]["reason"]


def test_each_key_sees_its_own_project_and_roles_hold(world):
    svc, callers, _ = world
    made = run(callers["alice"])
    ec2_id = made["Instances"][0]["InstanceId"]
    bob = callers["bob"]
    assert bob.call("DescribeInstances")["Reservations"] == []
    refused = bob.call("TerminateInstances", {"InstanceId.1": ec2_id})
    assert refused["Error"]["Code"] == "InvalidInstanceID.NotFound"
    vera = callers["vera"]
    assert len(vera.call("DescribeInstances")["Reservations"]) == 1
    denied = vera.call("StopInstances", {"InstanceId.1": ec2_id})
    assert denied["status"] == 403 and denied["Error"]["Code"] == "UnauthorizedOperation"
    assert len(svc.instances.list()) == 1


def test_dry_run_says_whether_it_would_succeed(world):
    svc, callers, _ = world
    yes = run(callers["alice"], DryRun="true")
    assert yes["Error"]["Code"] == "DryRunOperation" and svc.instances.list() == []
    no = run(callers["vera"], DryRun="true")
    assert no["Error"]["Code"] == "UnauthorizedOperation"


def test_caller_identity_and_the_catalogue(world):
    _, callers, _ = world
    alice = callers["alice"]
    resp = alice.client.post("/ec2", content=b"", headers={})  # unsigned
    assert resp.status_code == 401
    types = alice.call("DescribeInstanceTypes")["InstanceTypes"]
    assert {"t3.nano", "t3.micro", "t3.small", "t3.medium", "t3.large"} <= {
        t["InstanceType"] for t in types
    }
    images = alice.call("DescribeImages")["Images"]
    assert images[0]["ImageId"] == ids.image_id("tiny") and images[0]["Name"] == "tiny"
    assert alice.call("DescribeRegions")["Regions"][0]["RegionName"] == "gureum-1"
    bad = alice.call("RunInstances", {"ImageId": "ami-0000", "MinCount": "1", "MaxCount": "1"})
    assert bad["Error"]["Code"] == "InvalidAMIID.NotFound"


def test_key_pairs_security_groups_networks_and_snapshots(world):
    svc, callers, _ = world
    alice = callers["alice"]
    made = alice.call("CreateKeyPair", {"KeyName": "laptop"})
    assert made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me"
    imported = alice.call(
        "ImportKeyPair",
        {"KeyName": "desk", "PublicKeyMaterial": base64.b64encode(pub.encode()).decode()},
    )
    assert imported["KeyName"] == "desk"
    assert {k["KeyName"] for k in alice.call("DescribeKeyPairs")["KeyPairs"]} == {"laptop", "desk"}
    assert callers["bob"].call("DescribeKeyPairs")["KeyPairs"] == []
    alice.call("DeleteKeyPair", {"KeyName": "desk"})
    assert [k["KeyName"] for k in alice.call("DescribeKeyPairs")["KeyPairs"]] == ["laptop"]

    group = alice.call("CreateSecurityGroup", {"GroupName": "web", "GroupDescription": "w"})
    sg = group["GroupId"]
    opened = alice.call(
        "AuthorizeSecurityGroupIngress",
        {
            "GroupId": sg,
            "IpPermissions.1.IpProtocol": "tcp",
            "IpPermissions.1.FromPort": "80",
            "IpPermissions.1.ToPort": "80",
            "IpPermissions.1.IpRanges.1.CidrIp": "10.0.0.0/8",
        },
    )
    assert opened["Return"] is True
    (web,) = alice.call("DescribeSecurityGroups", {"GroupId.1": sg})["SecurityGroups"]
    assert web["IpPermissions"] == [
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    ]
    group_id = ids.to_gureum(sg, "sg")
    assert [r.port_from for r in svc.secgroups.get(group_id).rules] == [80]
    alice.call(
        "RevokeSecurityGroupIngress",
        {
            "GroupId": sg,
            "IpPermissions.1.IpProtocol": "tcp",
            "IpPermissions.1.FromPort": "80",
            "IpPermissions.1.ToPort": "80",
            "IpPermissions.1.IpRanges.1.CidrIp": "10.0.0.0/8",
        },
    )
    assert svc.secgroups.get(group_id).rules == []

    launched = run(alice, KeyName="laptop", **{"SecurityGroupId.1": sg})
    instance = launched["Instances"][0]
    assert [g["GroupName"] for g in instance["SecurityGroups"]] == ["web"]
    vpcs = alice.call("DescribeVpcs")["Vpcs"]
    subnets = alice.call("DescribeSubnets")["Subnets"]
    assert instance["SubnetId"] == subnets[0]["SubnetId"] and instance["VpcId"] == vpcs[0]["VpcId"]
    (volume,) = alice.call("DescribeVolumes")["Volumes"]
    assert volume["Attachments"][0]["InstanceId"] == instance["InstanceId"]
    snap = alice.call("CreateSnapshot", {"VolumeId": volume["VolumeId"]})
    assert snap["State"] == "completed" and snap["VolumeId"] == volume["VolumeId"]
    listed = alice.call("DescribeSnapshots")["Snapshots"]
    assert [s["SnapshotId"] for s in listed] == [snap["SnapshotId"]]
    assert callers["bob"].call("DescribeSnapshots")["Snapshots"] == []
    bobs = callers["bob"].call("DeleteSnapshot", {"SnapshotId": snap["SnapshotId"]})
    assert bobs["Error"]["Code"] == "InvalidSnapshot.NotFound"
    alice.call("DeleteSnapshot", {"SnapshotId": snap["SnapshotId"]})
    assert alice.call("DescribeSnapshots")["Snapshots"] == []


def test_tags_on_run_and_after(world):
    _, callers, _ = world
    alice = callers["alice"]
    spec = {
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "Name",
        "TagSpecification.1.Tag.1.Value": "db1",
        "TagSpecification.1.Tag.2.Key": "team",
        "TagSpecification.1.Tag.2.Value": "a",
    }
    ec2_id = run(alice, **spec)["Instances"][0]["InstanceId"]
    alice.call("CreateTags", {"ResourceId.1": ec2_id, "Tag.1.Key": "env", "Tag.1.Value": "prod"})
    (inst,) = alice.call(
        "DescribeInstances", {"Filter.1.Name": "tag:env", "Filter.1.Value.1": "prod"}
    )["Reservations"]
    tags = {t["Key"]: t["Value"] for t in inst["Instances"][0]["Tags"]}
    assert tags == {"Name": "db1", "team": "a", "env": "prod"}
    described = alice.call("DescribeTags", {"Filter.1.Name": "key", "Filter.1.Value.1": "env"})
    assert [(t["ResourceId"], t["Value"]) for t in described["Tags"]] == [(ec2_id, "prod")]
    alice.call("DeleteTags", {"ResourceId.1": ec2_id, "Tag.1.Key": "env"})
    assert (
        alice.call("DescribeTags", {"Filter.1.Name": "key", "Filter.1.Value.1": "env"})["Tags"]
        == []
    )
    renamed = alice.call(
        "CreateTags", {"ResourceId.1": ec2_id, "Tag.1.Key": "Name", "Tag.1.Value": "other"}
    )
    assert renamed["Error"]["Code"] == "InvalidParameterValue"
    reserved = alice.call(
        "CreateTags", {"ResourceId.1": ec2_id, "Tag.1.Key": "aws:x", "Tag.1.Value": "1"}
    )
    assert reserved["Error"]["Code"] == "InvalidParameterValue"
    # Another project's instance is not there to tag.
    foreign = callers["bob"].call(
        "CreateTags", {"ResourceId.1": ec2_id, "Tag.1.Key": "x", "Tag.1.Value": "y"}
    )
    assert foreign["Error"]["Code"] == "InvalidInstanceID.NotFound"


def test_the_instance_type_changes_only_when_stopped(world):
    svc, callers, _ = world
    alice = callers["alice"]
    ec2_id = run(alice)["Instances"][0]["InstanceId"]
    change = {"InstanceId": ec2_id, "InstanceType.Value": "t3.small"}
    running = alice.call("ModifyInstanceAttribute", change)
    assert running["Error"]["Code"] == "IncorrectInstanceState"
    alice.call("StopInstances", {"InstanceId.1": ec2_id})
    gureum_id = ids.to_gureum(ec2_id, "i")
    wait_for(lambda: svc.instances.get(gureum_id).state.value == "stopped", 10, what="stopped")
    assert alice.call("ModifyInstanceAttribute", change)["status"] == 200
    inst = svc.instances.get(gureum_id)
    assert (inst.spec.cpus, inst.spec.memory_mib) == (2, 2048)
    (seen,) = alice.call("DescribeInstances")["Reservations"][0]["Instances"]
    assert seen["InstanceType"] == "t3.small"


def test_every_ec2_action_declares_its_role(world):
    """The authorisation matrix for EC2: a viewer is refused every action that changes
    something (UnauthorizedOperation, before its parameters are read), and allowed every
    Describe; nothing is made either way."""
    from gureum.api.ec2 import actions, resources

    svc, callers, _ = world
    vera = callers["vera"]
    every = {**actions.ACTIONS, **resources.ACTIONS}
    assert len(every) >= 30
    for action in sorted(every):
        answer = vera.raw(action)
        if action.startswith("Describe"):
            assert answer.status_code != 403, (action, answer.text)
        else:
            assert answer.status_code == 403, (action, answer.text)
            assert b"UnauthorizedOperation" in answer.content, action
    assert svc.instances.list() == []


def test_a_key_shows_when_it_was_used_and_is_revoked_by_its_key_id(world):
    """A new user's walk through the docs: the key's "last used" stayed empty, and `gureum token
    revoke GKIA...` (the id the user has) was not found."""
    svc, callers, keys = world
    token = keys["alice"][0]
    callers["alice"].call("DescribeRegions")
    assert svc.tenancy.store.token(token.id).last_used_at is not None
    svc.tenancy.revoke(SUPERUSER, token.access_key_id)
    assert callers["alice"].call("DescribeRegions")["Error"]["Code"] == "AuthFailure"


def test_create_image_describe_launch_and_deregister(world):
    svc, callers, _ = world
    alice, vera, bob = callers["alice"], callers["vera"], callers["bob"]
    web = run(alice)["Instances"][0]["InstanceId"]
    made = alice.call("CreateImage", {"InstanceId": web, "Name": "golden", "Description": "base"})
    ami = made["ImageId"]
    assert made["status"] == 200 and ami == ids.image_id("golden")

    def own() -> list[dict]:  # type: ignore[type-arg]
        return alice.call("DescribeImages", {"Owner.1": "self"})["Images"]

    wait_for(lambda: [i["State"] for i in own()] == ["available"], 10, what="the image made")
    (image,) = own()
    team_a = svc.tenancy.store.project("team-a").id
    assert (image["Name"], image["OwnerId"], image["Public"]) == ("golden", team_a, False)
    assert image["Description"] == "base"
    everything = {i["ImageId"] for i in alice.call("DescribeImages")["Images"]}
    assert everything == {ami, ids.image_id("tiny")}
    launched = alice.call("RunInstances", {"ImageId": ami, "MinCount": "1", "MaxCount": "1"})
    clone = launched["Instances"][0]["InstanceId"]
    # Another project: not found anywhere, the name still taken.
    assert ami not in {i["ImageId"] for i in bob.call("DescribeImages")["Images"]}
    for action, params in (
        ("RunInstances", {"ImageId": ami, "MinCount": "1", "MaxCount": "1"}),
        ("DeregisterImage", {"ImageId": ami}),
        ("DescribeImages", {"ImageId.1": ami}),
    ):
        assert bob.call(action, params)["Error"]["Code"] == "InvalidAMIID.NotFound"
    bobs = run(bob)["Instances"][0]["InstanceId"]
    dup = bob.call("CreateImage", {"InstanceId": bobs, "Name": "golden"})
    assert dup["Error"]["Code"] == "InvalidAMIName.Duplicate"
    bad = bob.call("CreateImage", {"InstanceId": bobs, "Name": "has space"})
    assert bad["Error"]["Code"] == "InvalidAMIName.Malformed"
    assert (
        vera.call("DeregisterImage", {"ImageId": ami})["Error"]["Code"] == "UnauthorizedOperation"
    )
    catalog = alice.call("DeregisterImage", {"ImageId": ids.image_id("tiny")})
    assert catalog["Error"]["Code"] == "UnauthorizedOperation"
    assert alice.call("DeregisterImage", {"ImageId": ami})["status"] == 400  # the clone uses it
    alice.call("TerminateInstances", {"InstanceId.1": clone})
    gone = alice.call("DeregisterImage", {"ImageId": ami})
    assert gone["status"] == 200 and gone["Return"] is True
    assert own() == [] and svc.images.store.get("golden") is None


def test_an_instance_whose_host_is_unreachable_is_running_and_impaired(world):
    svc, callers, _ = world
    alice = callers["alice"]
    ec2_id = run(alice)["Instances"][0]["InstanceId"]
    (inst,) = svc.instances.list()
    svc.hosts.store.report("far", time.time() - svc.config.host_unreachable_after_s - 5,
                           accel="tcg", cpus=8, memory_mib=8192, memory_reserve_mib=512,
                           cpu_overcommit=1.0)  # fmt: skip
    ok = alice.call("DescribeInstanceStatus", {"InstanceId.1": ec2_id})["InstanceStatuses"][0]
    assert (ok["InstanceState"]["Name"], ok["InstanceStatus"]["Status"]) == ("running", "ok")
    svc.instances.store.update(inst.id, host="far")
    seen = alice.call("DescribeInstanceStatus", {"InstanceId.1": ec2_id})["InstanceStatuses"][0]
    assert seen["InstanceState"]["Name"] == "running"  # as EC2 keeps it on an impaired host
    assert (seen["SystemStatus"]["Status"], seen["InstanceStatus"]["Status"]) == (
        "impaired",
        "impaired",
    )
