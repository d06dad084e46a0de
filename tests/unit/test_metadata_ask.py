"""A joined host's metadata lookups (``host/metadata_ask.py``): bounded questions to the
control plane, for all of the host's guests together, and no answer taken for nobody."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gureum.errors import GureumError, Unavailable
from gureum.host import metadata_ask
from gureum.host.metadata_ask import MetadataAsk, caller_of
from gureum.network.metadata import Caller
from gureum.sys import jsonline

MAC = "52:54:00:12:34:56"


async def seen(network_id: str, ip: str) -> str | None:
    return MAC.upper() if ip.startswith("10.0.0.") else None


def test_questions_at_once_are_bounded_below_the_cluster_ports_share(tmp_path: Path) -> None:
    asking = MetadataAsk(tmp_path, seen)
    now, most = 0, 0

    async def ask(network_id: str, ip: str, mac: str) -> Caller | None:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.05)
        now -= 1
        return Caller("i-1", "vm", ip, mac, (), None)

    asking._ask = ask  # type: ignore[method-assign]

    async def scenario() -> list[Caller | None]:
        return await asyncio.gather(*(asking("n-1", f"10.0.0.{i}") for i in range(2, 42)))

    answers = asyncio.run(scenario())
    assert all(a is not None and a.mac == MAC for a in answers)
    assert most == metadata_ask.ASKS_AT_ONCE < jsonline.MAX_PER_ADDRESS
    assert asyncio.run(asking("n-1", "192.168.0.9")) is None  # nobody there: not asked


def test_no_answer_from_any_control_plane_is_unavailable_not_nobody(tmp_path: Path) -> None:
    asking = MetadataAsk(tmp_path, seen)

    async def down(network_id: str, ip: str, mac: str) -> Caller | None:
        raise Unavailable("connection refused")

    asking._ask = down  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        asyncio.run(asking("n-1", "10.0.0.2"))


def test_an_answer_about_another_address_or_mac_is_not_taken() -> None:
    found = {"instance_id": "i-1", "hostname": "vm", "ip": "10.0.0.2", "mac": MAC,
             "public_keys": [], "user_data": None}  # fmt: skip
    assert caller_of(found, "n-1", "10.0.0.2", MAC) is not None
    assert caller_of(None, "n-1", "10.0.0.2", MAC) is None
    for wrong in ({"ip": "10.0.0.3"}, {"mac": "52:54:00:00:00:01"}, {"public_keys": "k"},
                  {"user_data": 5}, {"hostname": None}):  # fmt: skip
        with pytest.raises(GureumError, match="is not a VM"):
            caller_of({**found, **wrong}, "n-1", "10.0.0.2", MAC)
