"""Two rtnetlink requests, made directly instead of through ``ip``: moving a link into another
network namespace, and attaching a link to a bridge and bringing it up. They are on the launch
path of a QEMU taken from the pool, where an ``ip`` process each costs more than the rest of
the step. Call them on a thread inside the link's namespace (``netns.run_in``)."""

from __future__ import annotations

import itertools
import os
import socket
import struct

RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_MASTER = 10
IFLA_NET_NS_FD = 28
IFF_UP = 0x1
_seq = itertools.count(1)


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("HH", length, kind) + value + b"\0" * (-length % 4)


def _set_link(index: int, flags: int, change: int, attrs: list[tuple[int, bytes]]) -> None:
    """RTM_NEWLINK on an existing link (by index), waiting for the kernel's answer."""
    # struct ifinfomsg: family, pad, type, index, flags, change
    payload = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, flags, change)
    payload += b"".join(_attr(kind, value) for kind, value in attrs)
    seq = next(_seq)
    header = struct.pack("IHHII", 16 + len(payload), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sock:
        sock.bind((0, 0))
        sock.send(header + payload)
        while True:
            reply = sock.recv(65536)
            _, kind, _, got_seq, _ = struct.unpack_from("IHHII", reply)
            if kind == NLMSG_ERROR and got_seq == seq:
                error = struct.unpack_from("i", reply, 16)[0]
                if error:
                    raise OSError(-error, os.strerror(-error))
                return


def move_to_namespace(name: str, namespace_path: str) -> None:
    """Move link ``name`` (of the calling thread's namespace) into the namespace at that path."""
    fd = os.open(namespace_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _set_link(socket.if_nametoindex(name), 0, 0, [(IFLA_NET_NS_FD, struct.pack("I", fd))])
    finally:
        os.close(fd)


def attach_up(name: str, bridge: str) -> None:
    """Attach link ``name`` to ``bridge`` and bring it up (the calling thread's namespace)."""
    master = struct.pack("I", socket.if_nametoindex(bridge))
    _set_link(socket.if_nametoindex(name), IFF_UP, IFF_UP, [(IFLA_MASTER, master)])
