"""The ``HostAgent`` interface over the wire: which of its methods the control plane may call on
a joined host's agent, and how their arguments and results travel as JSON.

One fact in one place: a call is encoded and decoded by the type hints of the method in
``host/interface.py``, so the wire follows the interface as it changes; only the names in
``REMOTE_METHODS`` may be called, and nothing else of the agent is reachable.

Paths never travel as the sender's absolute paths. Each end has a root: the agent its home, the
control plane ``REMOTE_ROOT`` (a stand-in, as it cannot know a remote home); a path is sent
relative to the sender's root and joined to the receiver's. One that is absolute, climbs out
with ``..``, is outside the sender's root, names no folder of ``HOST_FOLDERS`` (the agent's own
keys, the store, the home itself are never named), or leads out of its folder through a link
is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import inspect
import math
import os
import types
import typing
from pathlib import Path, PurePosixPath
from typing import Any

from gureum.errors import InvalidInput
from gureum.host.interface import HostAgent

REMOTE_ROOT = Path("/gureum-remote-host")  # what a remote host's paths look like on this side

# What the control plane may ask of a joined host's agent (async methods of HostAgent whose
# arguments and results are data): its disks, networks and instances' lives.
REMOTE_METHODS = frozenset({
    "create_disk", "grow_disk_offline", "remove_file", "revoke_access",
    "ensure_network", "remove_network", "sync_network", "neighbour_mac",
    "wait_ready", "stop", "kill", "destroy", "pause", "resume", "freeze", "thaw",
    "thaw_if_frozen", "guest_memory_kib", "console_log", "exec", "instance_stats",
})  # fmt: skip

MAX_ITEMS = 10_000
MAX_INT = (1 << 63) - 1  # what the store and the host's figures hold

# The folders of a host's home a travelling path may name (as ``config.py`` names them; a test
# holds the two together): never the agent's keys, the store or the cluster's files.
HOST_FOLDERS = frozenset({"disks", "images", "instances", "project-images", "snapshots"})


@functools.cache
def hints(method: str) -> dict[str, Any]:
    """The argument and return types of a remote method (``KeyError`` for any other name);
    read once each (every call to a joined host decodes by them)."""
    if method not in REMOTE_METHODS:
        raise KeyError(method)
    return typing.get_type_hints(getattr(HostAgent, method))


@functools.cache
def signature(method: str) -> inspect.Signature:
    """A ``HostAgent`` method's signature, read once: calls routed or sent to another host
    bind their arguments to it."""
    return inspect.signature(getattr(HostAgent, method))


def encode(value: Any, hint: Any, root: Path) -> Any:
    """``value`` of type ``hint`` as JSON, its paths relative to ``root``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if hint is Path:
        try:
            return str(PurePosixPath(value).relative_to(root))
        except ValueError:
            raise InvalidInput(f"{value} is not under {root}") from None
    if hint is bytes:
        return base64.b64encode(value).decode()
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in args if a is not type(None)]
        return encode(value, inner, root)
    if origin in (tuple, list):
        each = args[:1] * len(value) if origin is list or args[-1:] == (...,) else args
        return [encode(v, h, root) for v, h in zip(value, each, strict=True)]
    if origin is dict:
        return {str(k): encode(v, args[1], root) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        fields = typing.get_type_hints(hint)
        return {f.name: encode(getattr(value, f.name), fields[f.name], root)
                for f in dataclasses.fields(hint)}  # fmt: skip
    return value


def decode(raw: Any, hint: Any, root: Path, where: str = "value") -> Any:
    """A value of type ``hint`` from JSON, checked strictly (InvalidInput, naming ``where``);
    its paths joined to ``root``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = InvalidInput(f"{where}: not a {getattr(hint, '__name__', hint)}")
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(raw, inner, root, where)
    if hint is type(None):
        if raw is not None:
            raise bad
        return None
    if hint is Path:
        if not isinstance(raw, str) or not raw or len(raw) > 4096:
            raise bad
        rel = PurePosixPath(raw)
        if (
            rel.is_absolute()
            or ".." in rel.parts
            or "\0" in raw
            or not rel.parts
            or rel.parts[0] not in HOST_FOLDERS
        ):
            raise InvalidInput(
                f"{where}: a path must stay in the host's {', '.join(sorted(HOST_FOLDERS))}, "
                f"not {raw[:100]!r}"
            )
        full = root / rel
        if root.is_dir() and not Path(os.path.realpath(full)).is_relative_to(
            os.path.realpath(root / rel.parts[0])
        ):  # a link inside the home does not lead out of its folder
            raise InvalidInput(f"{where}: {raw[:100]!r} leads out of the host's home")
        return full
    if hint is bytes:
        if not isinstance(raw, str):
            raise bad
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError:  # binascii.Error
            raise bad from None
    if hint is bool:
        if not isinstance(raw, bool):
            raise bad
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not -MAX_INT <= raw <= MAX_INT:
            raise bad
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or abs(raw) > MAX_INT:
            raise bad
        value = float(raw)
        if not math.isfinite(value):
            raise bad
        return value
    if hint is str:
        if not isinstance(raw, str):
            raise bad
        return raw
    if origin in (tuple, list):
        if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
            raise bad
        if origin is list or args[-1:] == (...,):
            each = args[:1] * len(raw)
        elif len(raw) == len(args):
            each = args
        else:
            raise bad
        pairs = enumerate(zip(raw, each, strict=True))
        items = [decode(v, h, root, f"{where}[{i}]") for i, (v, h) in pairs]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(raw, dict) or len(raw) > MAX_ITEMS or args[0] is not str:
            raise bad
        if not all(isinstance(k, str) for k in raw):
            raise bad
        return {k: decode(v, args[1], root, f"{where}.{k}") for k, v in raw.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        if not isinstance(raw, dict) or not set(raw) <= names:
            raise bad
        given = {k: decode(v, fields[k], root, f"{where}.{k}") for k, v in raw.items()}
        try:
            return hint(**given)
        except TypeError:
            raise bad from None
    raise InvalidInput(f"{where}: {hint} does not travel")


def encode_call(method: str, kwargs: dict[str, Any], root: Path) -> dict[str, Any]:
    """A call of ``method`` with keyword arguments, as the agent's ``call`` operation."""
    types_of = hints(method)
    return {
        "op": "call",
        "method": method,
        "args": {k: encode(v, types_of[k], root) for k, v in kwargs.items()},
    }


def decode_call(request: dict[str, Any], root: Path) -> tuple[str, dict[str, Any]]:
    """The method and keyword arguments of a ``call`` (InvalidInput for anything else)."""
    method, args = request.get("method"), request.get("args")
    if not isinstance(method, str) or method not in REMOTE_METHODS:
        raise InvalidInput(f"no remote method {str(method)[:40]!r}")
    types_of = hints(method)
    params = {k for k in types_of if k != "return"}
    if not isinstance(args, dict) or not set(args) <= params:
        raise InvalidInput(f"{method} takes {', '.join(sorted(params))}")
    return method, {k: decode(v, types_of[k], root, f"{method}.{k}") for k, v in args.items()}
