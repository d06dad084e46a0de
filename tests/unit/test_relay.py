"""The WebSocket relay counts what went through as it goes: a session that ends in an error
is still audited with its real byte counts."""

from __future__ import annotations

import asyncio

import pytest

from gureum.api.relay import Relayed, relay
from gureum.errors import EngineError


class Socket:
    """A client that sends two frames and then waits; what it is sent is kept."""

    def __init__(self) -> None:
        self.frames = [{"type": "websocket.receive", "bytes": b"abc"},
                       {"type": "websocket.receive", "text": "de"}]  # fmt: skip
        self.sent: list[bytes] = []

    async def receive(self) -> dict[str, object]:
        await asyncio.sleep(0.05)  # the VM's side speaks first
        if self.frames:
            return self.frames.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int, reason: str) -> None:
        pass


def test_counts_survive_a_failure_of_the_vms_side() -> None:
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        if written:
            raise EngineError("the serial console went away")
        written.append(data)

    out = [b"hello", b""]

    async def read() -> bytes:
        return out.pop(0) if out else await asyncio.sleep(3600) or b""

    done = Relayed()

    async def session() -> None:
        await relay(Socket(), read, write, done, ended="gone", text=True)  # type: ignore[arg-type]

    with pytest.raises(EngineError):
        asyncio.run(session())
    # The first frame went through and the second was being written when the failure came.
    assert done.bytes_in == 5 and done.bytes_out == 5 and written == [b"abc"]
