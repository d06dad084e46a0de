"""The EC2 API with the real clients, unmodified, over HTTPS with the service's certificate: boto3
launches two tiny VMs with user-data and a key pair, waits with its own waiters, and the guests
themselves report both; describe with filters and pagination, stop and start, tag, snapshot,
an image of a running VM that boots with the file written in it, terminate; a security-group
rule added through EC2 opens a port between the two VMs (traffic from inside a guest); the AWS
CLI lists them; a key of another project sees nothing of them.
(The signature checks, one by one: tests/unit/test_ec2_api.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from gureum.client.client import Client, Endpoint
from tests.integration.conftest import Service, running_service

pytestmark = pytest.mark.vm

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ec2"
USER_DATA = "#!/bin/sh\necho from-ec2-user-data\n"
MD = "http://169.254.169.254/latest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cloud:
    def __init__(self, svc: Service, url: str) -> None:
        self.svc, self.url = svc, url
        self.ca = svc.home / "tls" / "cert.pem"
        self.keys: dict[str, tuple[str, str]] = {}

    def ec2(self, user: str):  # type: ignore[no-untyped-def]
        key, secret = self.keys[user]
        return boto3.client(
            "ec2",
            endpoint_url=f"{self.url}/ec2",
            region_name="gureum-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            verify=str(self.ca),
            config=BotoConfig(retries={"max_attempts": 1}),
        )

    def aws(self, user: str, *args: str) -> dict:  # type: ignore[type-arg]
        """The AWS CLI, as a user runs it: credentials in the environment."""
        key, secret = self.keys[user]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUREUM_", "AWS_"))}
        env |= {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "gureum-1",
            "HOME": str(self.svc.home),
        }
        aws = Path(sys.executable).parent / "aws"
        proc = subprocess.run(
            [
                str(aws),
                "--endpoint-url",
                f"{self.url}/ec2",
                "--ca-bundle",
                str(self.ca),
                "--output",
                "json",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout or "{}")


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    port = _free_port()
    with running_service({"GUREUM_LISTEN": f"127.0.0.1:{port}"}) as svc:
        c = Cloud(svc, f"https://127.0.0.1:{port}")
        for project, user in (("ec2-a", "ec2-alice"), ("ec2-b", "ec2-bob")):
            svc.cli("project", "create", project)
            svc.cli("user", "create", user)
            svc.cli("project", "member", "add", project, user, "--role", "member")
            made = svc.cli(
                "--project",
                project,
                "token",
                "create",
                "--user",
                user,
                "--name",
                "sdk",
                "--aws",
                "-o",
                "json",
            )
            token = json.loads(made.stdout)
            c.keys[user] = (token["access_key_id"], token["secret_access_key"])
        try:
            yield c
        finally:  # whatever a failing test left (the harness sees the default project only)
            for project in ("ec2-a", "ec2-b"):
                with admin(c, project) as client:
                    for inst in client.instances():
                        client.delete(inst["id"], force=True)


@pytest.fixture(scope="module")
def pair(cloud: Cloud) -> list[str]:
    """Two tiny VMs launched by boto3 with user-data and a key pair, running."""
    ec2 = cloud.ec2("ec2-alice")
    ec2.import_key_pair(KeyName="laptop", PublicKeyMaterial=PUBLIC_KEY.encode())
    image = next(i["ImageId"] for i in ec2.describe_images()["Images"] if i["Name"] == "tiny")
    made = ec2.run_instances(
        ImageId=image,
        InstanceType="t2.nano",
        MinCount=2,
        MaxCount=2,
        KeyName="laptop",
        UserData=USER_DATA,  # boto3 encodes it (base64), as for AWS
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "Name", "Value": "e"}, {"Key": "team", "Value": "a"}],
            }
        ],
    )
    ids = [i["InstanceId"] for i in made["Instances"]]
    ec2.get_waiter("instance_running").wait(
        InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 120}
    )
    return ids


def admin(cloud: Cloud, project: str) -> Client:
    """The administrator on the local socket, acting in ``project``."""
    return Client(Endpoint("http://gureum", cloud.svc.home / "gureum.sock", None, project))


def guest(cloud: Cloud, name: str, command: str) -> str:
    with admin(cloud, "ec2-a") as c:
        res = c.exec(name, ["sh", "-c", command])
    assert res["exit_code"] == 0, res
    return res["stdout"].decode()


def test_boto3_launches_what_the_guests_report(cloud: Cloud, pair: list[str]) -> None:
    ec2 = cloud.ec2("ec2-alice")
    described = ec2.describe_instances(InstanceIds=pair)["Reservations"]
    names = sorted(i["Tags"][0]["Value"] for r in described for i in r["Instances"])
    assert names == ["e-1", "e-2"]
    for name in names:
        assert guest(cloud, name, f"wget -qO- {MD}/user-data") == USER_DATA
        keys = guest(cloud, name, f"wget -qO- {MD}/meta-data/public-keys/0/openssh-key")
        assert keys.strip() == PUBLIC_KEY
    # The instance-state filter and pagination (MaxResults 5 of 2: one page), boto3's paginator.
    running = ec2.describe_instances(
        Filters=[
            {"Name": "instance-state-name", "Values": ["running"]},
            {"Name": "tag:team", "Values": ["a"]},
        ]
    )
    assert sorted(
        i["InstanceId"] for r in running["Reservations"] for i in r["Instances"]
    ) == sorted(pair)
    pages = list(ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))
    assert sum(len(p["Reservations"]) for p in pages) == 2


def test_a_rule_added_through_ec2_opens_a_port_between_the_vms(
    cloud: Cloud, pair: list[str]
) -> None:
    ec2 = cloud.ec2("ec2-alice")
    group = ec2.create_security_group(GroupName="web", Description="web")["GroupId"]
    # e-2 in that group only (the default group lets its members in), a listener on it, tried
    # from e-1 before and after the rule.
    cloud.svc.cli("--project", "ec2-a", "secgroup", "attach", "e-2", "web")
    cloud.svc.cli("--project", "ec2-a", "secgroup", "detach", "e-2", "default")
    ip = next(
        i["PrivateIpAddress"]
        for r in ec2.describe_instances(InstanceIds=[pair[1]])["Reservations"]
        for i in r["Instances"]
    )
    guest(cloud, "e-2", "(while true; do echo open | nc -l -p 8080; done) >/dev/null 2>&1 &")
    probe = f"echo hi | nc -w 3 {ip} 8080 || true"
    closed = guest(cloud, "e-1", probe)
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8080,
                "ToPort": 8080,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
            }
        ],
    )
    opened = guest(cloud, "e-1", probe)
    assert "open" not in closed and "open" in opened


def test_stop_start_tag_snapshot_and_the_aws_cli(cloud: Cloud, pair: list[str]) -> None:
    ec2 = cloud.ec2("ec2-alice")
    first = pair[0]
    ec2.stop_instances(InstanceIds=[first])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[first], WaiterConfig={"Delay": 2})
    ec2.start_instances(InstanceIds=[first])
    ec2.get_waiter("instance_running").wait(InstanceIds=[first], WaiterConfig={"Delay": 2})
    ec2.create_tags(Resources=[first], Tags=[{"Key": "env", "Value": "test"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [first]}])["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} >= {("env", "test"), ("team", "a")}
    volume = ec2.describe_volumes()["Volumes"]
    vol = next(v["VolumeId"] for v in volume if v["Attachments"][0]["InstanceId"] == first)
    snap = ec2.create_snapshot(VolumeId=vol)
    assert snap["State"] == "completed"
    assert [s["SnapshotId"] for s in ec2.describe_snapshots()["Snapshots"]] == [snap["SnapshotId"]]
    listed = cloud.aws("ec2-alice", "ec2", "describe-instances")
    assert sorted(
        i["InstanceId"] for r in listed["Reservations"] for i in r["Instances"]
    ) == sorted(pair)
    who = cloud.aws("ec2-alice", "sts", "get-caller-identity")
    assert who["Arn"].endswith("user/ec2-alice")


def test_another_projects_key_sees_and_touches_nothing(cloud: Cloud, pair: list[str]) -> None:
    bob = cloud.ec2("ec2-bob")
    assert bob.describe_instances()["Reservations"] == []
    with pytest.raises(ClientError) as refused:
        bob.terminate_instances(InstanceIds=[pair[0]])
    assert refused.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    wrong = boto3.client(
        "ec2",
        endpoint_url=f"{cloud.url}/ec2",
        region_name="gureum-1",
        aws_access_key_id=cloud.keys["ec2-alice"][0],
        aws_secret_access_key="x" * 40,
        verify=str(cloud.ca),
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as bad:
        wrong.describe_instances()
    assert bad.value.response["Error"]["Code"] == "AuthFailure"


def test_an_image_of_a_running_vm_boots_with_its_files(cloud: Cloud, pair: list[str]) -> None:
    ec2 = cloud.ec2("ec2-alice")
    guest(cloud, "e-1", "echo golden-$((6*7)) > /root/mark && sync")
    made = ec2.create_image(InstanceId=pair[0], Name="golden", Description="e-1 with a mark")
    ec2.get_waiter("image_available").wait(
        ImageIds=[made["ImageId"]], WaiterConfig={"Delay": 2, "MaxAttempts": 150}
    )
    # e-1 kept running through it (its disk was copied through a snapshot).
    state = ec2.describe_instances(InstanceIds=[pair[0]])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "running"
    assert made["ImageId"] not in {
        i["ImageId"] for i in cloud.ec2("ec2-bob").describe_images()["Images"]
    }
    run = ec2.run_instances(
        ImageId=made["ImageId"], InstanceType="t2.nano", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "g"}]}],
    )  # fmt: skip
    new = run["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(
        InstanceIds=[new], WaiterConfig={"Delay": 2, "MaxAttempts": 120}
    )
    assert guest(cloud, "g", "cat /root/mark").strip() == "golden-42"  # what the guest reads
    ec2.terminate_instances(InstanceIds=[new])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[new], WaiterConfig={"Delay": 2})
    ec2.deregister_image(ImageId=made["ImageId"])
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_terminate_and_wait(cloud: Cloud, pair: list[str]) -> None:
    ec2 = cloud.ec2("ec2-alice")
    ec2.terminate_instances(InstanceIds=pair)
    ec2.get_waiter("instance_terminated").wait(InstanceIds=pair, WaiterConfig={"Delay": 2})
    with admin(cloud, "ec2-a") as c:
        assert c.instances() == []
