"""A container's NIC: a veth pair, one end on its network's bridge, the other its ``eth<slot>``.

The bridge's end is named as a VM's TAP in that slot would be (``tap.tap_name``): the network's
DHCP entries, anti-spoofing and security groups (firewall.py matches that name) treat a
container's NIC as a VM's. The container's end gets the instance's MAC and is left down: the
container's own init brings it up and asks DHCP, as a VM's does.

Plug a container between ``runc create`` and ``runc start``: its network namespace exists, its
init has not run yet.
"""

from __future__ import annotations

from gureum.network import netns, tap


async def plug(
    namespace: str, bridge: str, instance_id: str, slot: int, mac: str, pid: int
) -> None:
    """Give the container whose init is ``pid`` (a host pid) its NIC in slot ``slot`` on the
    network whose namespace is ``namespace``. Undone on failure."""
    host = tap.tap_name(instance_id, slot)
    # One call makes both ends: the container's made in its own namespace, named and with its
    # MAC from the start (a launch waits on every step here).
    await netns.ip(namespace, "link", "add", host, "type", "veth", "peer", "name", f"eth{slot}",
                   "address", mac, "netns", str(pid))  # fmt: skip
    try:
        await netns.ip(namespace, "link", "set", host, "master", bridge, "up")
    except BaseException:
        await unplug(namespace, instance_id, slot)
        raise


async def unplug(namespace: str, instance_id: str, slot: int) -> None:
    """Remove the pair (both ends go together); a no-op when it is gone already, as it is once
    the container's network namespace ended."""
    await netns.ip(namespace, "link", "del", tap.tap_name(instance_id, slot), check=False)
