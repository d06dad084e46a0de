"""EC2's id shapes for gureum's resources, one to one, computed (nothing stored): an instance
``i-`` + 17 hex digits is ``i-00000`` + gureum's 12; an image ``ami-`` + the first 17 hex
digits of its name's SHA-256 (gureum's images are named); a network is a VPC and its subnet."""

from __future__ import annotations

import hashlib
import re

from gureum.api.ec2.errors import Ec2Error
from gureum.ids import EC2_PAD as PAD
from gureum.ids import ec2_id

_EC2 = re.compile(r"(i|sg|snap|key|vpc|subnet|vol)-" + PAD + r"([0-9a-f]{12})")

# EC2 prefix -> gureum prefix
# (an instance's root volume is named after the instance: one disk each)
GUREUM_PREFIX = {
    "i": "i-",
    "sg": "sg-",
    "snap": "s-",
    "key": "kp-",
    "vpc": "n-",
    "subnet": "n-",
    "vol": "i-",
}


def to_ec2(kind: str, gureum_id: str) -> str:
    return ec2_id(kind, gureum_id)


def to_gureum(ec2_id: str, kind: str) -> str | None:
    """The gureum id of an EC2 id of ``kind`` (None: not of that shape)."""
    m = _EC2.fullmatch(ec2_id)
    if m is None or m.group(1) != kind:
        return None
    return GUREUM_PREFIX[kind] + m.group(2)


def image_id(name: str) -> str:
    return "ami-" + hashlib.sha256(name.encode()).hexdigest()[:17]


MALFORMED = {"i": "InvalidInstanceID", "sg": "InvalidGroupId", "subnet": "InvalidSubnetID",
             "vol": "InvalidVolumeID", "snap": "InvalidSnapshotID", "key": "InvalidKeyPair",
             "vpc": "InvalidVpcID"}  # fmt: skip


def parse(ec2_id: str, kind: str) -> str:
    """The gureum id of an EC2 id of ``kind``; EC2's ``...Malformed`` error if not of its shape."""
    gureum_id = to_gureum(ec2_id, kind)
    if gureum_id is None:
        raise Ec2Error(f"{MALFORMED[kind]}.Malformed", f"Invalid id: '{ec2_id[:40]}'")
    return gureum_id
