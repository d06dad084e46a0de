"""OpenSSH public keys, as users hand them in and guests report them: checked, never trusted."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

MAX_KEY_LINE = 16384  # an RSA 16384-bit key is under 3 KiB; anything longer is not a key
# An instance's keys, given and from key pairs together: all of them and its user-data travel
# in one metadata answer to a joined host (at most 1 MiB, sys/jsonline.py's MAX_ANSWER).
MAX_KEYS = 32


def public_key(text: str, *, keep_comment: bool = False) -> str | None:
    """One OpenSSH public key line (``TYPE BASE64 [COMMENT]``) as it should be stored, or None
    when it is not one: its type, its base64 blob, which must decode and name the same type
    (a private key, a fingerprint or a truncated paste does not), and its comment if kept."""
    if len(text) > MAX_KEY_LINE or "\n" in text.strip():
        return None
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    size = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + size or blob[4 : 4 + size] != parts[0].encode():
        return None
    if len(parts) == 3 and not parts[2].isprintable():
        return None  # control characters (a terminal escape, a line break of another kind)
    if keep_comment and len(parts) == 3:
        return f"{parts[0]} {parts[1]} {parts[2]}"
    return f"{parts[0]} {parts[1]}"


def fingerprint(key: str) -> str:
    """``SHA256:...`` of a checked public key, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class KeyPair:
    """A public key kept under a name in a project, for launches to name (EC2's key pairs)."""

    id: str
    project_id: str
    name: str
    public_key: str
    fingerprint: str
    created_at: float

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "public_key": self.public_key,
                "fingerprint": self.fingerprint, "created_at": self.created_at}  # fmt: skip
