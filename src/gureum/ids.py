"""Identifiers and user-chosen names."""

from __future__ import annotations

import re
import secrets

from gureum.errors import InvalidInput

# A name becomes the guest's hostname and part of QEMU's -name, so it follows the DNS label
# rules (RFC 1123): lowercase letters, digits and inner hyphens, at most 63 characters. Matched
# whole (fullmatch): "$" also matches before a final newline, and "a1\n" would reach DNS host
# files, DHCP host files and the kernel command line.
_NAME = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = (
    "1 to 63 characters: lowercase letters, digits and '-', starting with a letter "
    "and not ending with '-'"
)


def new_id(prefix: str = "") -> str:
    """A short random id: 12 hex digits keeps socket paths well under the 108-byte limit."""
    return prefix + secrets.token_hex(6)


def check_name(name: str, *, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 70 else f"{str(name)[:60]}..."
        raise InvalidInput(f"invalid {what} {shown!r}: {NAME_RULE}")
    return name


def looks_like_id(ref: str, prefix: str = "") -> bool:
    body = ref[len(prefix) :] if prefix and ref.startswith(prefix) else None
    return body is not None and len(body) == 12 and all(c in "0123456789abcdef" for c in body)


EC2_PAD = "00000"  # gureum's ids have 12 hex digits, EC2's 17


def ec2_id(kind: str, gureum_id: str) -> str:
    """A resource's id in EC2's shape: ``ec2_id("i", "i-0123456789ab")`` is
    ``i-000000123456789ab`` (the EC2 API's and the metadata service's EC2 paths': one fact)."""
    return f"{kind}-{EC2_PAD}{gureum_id.split('-', 1)[1]}"
