"""Bytes both ways between a WebSocket client and something of a VM's (its serial console, a
TCP stream to its SSH port): binary frames out, the client's frames in, until either side ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import WebSocket, WebSocketDisconnect


@dataclass
class Relayed:
    """What went through: for the session's audit record."""

    bytes_in: int = 0  # from the client
    bytes_out: int = 0  # to the client


async def relay(
    websocket: WebSocket,
    read: Callable[[], Awaitable[bytes | None]],
    write: Callable[[bytes], Awaitable[None]],
    done: Relayed,
    *,
    ended: str,
    text: bool = False,
) -> None:
    """Send what ``read`` gives (b"" or None: the VM's side ended, the socket is closed with
    ``ended`` as the reason) and pass each client frame to ``write`` (text frames too when
    ``text``), until the client leaves or the VM's side ends. ``done`` counts as it goes, so
    the caller's audit record is right even when this raises; the caller releases what it
    opened."""

    async def pump_out() -> None:
        while chunk := await read():
            done.bytes_out += len(chunk)
            await websocket.send_bytes(chunk)
        with contextlib.suppress(Exception):
            await websocket.close(code=1000, reason=ended)

    sender = asyncio.create_task(pump_out())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes") or b""
            if not data and text:
                data = (message.get("text") or "").encode()
            if data:
                done.bytes_in += len(data)
                await write(data)
    except (WebSocketDisconnect, ConnectionError):
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
