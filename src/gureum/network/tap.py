"""TAP devices, opened inside a network's namespace and handed to QEMU as a file descriptor.

The TAP is not persistent: it exists while some process holds its descriptor, so when a VM's
QEMU exits its TAP disappears by itself. QEMU never needs the privilege to create one.
"""

from __future__ import annotations

import fcntl
import os
import struct

from gureum.network import netlink, netns

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def _open(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(
            fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        )
    except OSError:
        os.close(fd)
        raise
    return fd


def tap_name(instance_id: str, slot: int) -> str:
    """A VM NIC's TAP name in its network's namespace (at most 15 characters)."""
    return f"t{instance_id[-11:]}{slot}"


async def open_tap(namespace: str, name: str, bridge: str | None) -> int:
    """Create TAP ``name`` in ``namespace``, attach it to ``bridge`` (None: leave it alone and
    down, for a QEMU that never runs) and return its fd."""
    fd = await netns.arun_in(namespace, lambda: _open(name))
    if bridge is None:
        return fd
    try:
        await netns.ip(namespace, "link", "set", name, "master", bridge, "up")
    except BaseException:
        os.close(fd)
        raise
    return fd


async def move_tap(from_namespace: str, to_namespace: str, name: str) -> None:
    """Move TAP ``name`` (made by ``open_tap`` without a bridge, its fd already QEMU's) into
    another namespace, down and on no bridge there: a waiting QEMU's NIC going to its VM's
    network (``attach`` puts it on the bridge)."""
    target = str(netns.NETNS_DIR / to_namespace)
    await netns.arun_in(from_namespace, lambda: netlink.move_to_namespace(name, target))


async def attach(namespace: str, name: str, bridge: str) -> None:
    """Attach TAP ``name`` to ``bridge`` in its namespace and bring it up."""
    await netns.arun_in(namespace, lambda: netlink.attach_up(name, bridge))
