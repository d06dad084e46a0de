"""The live event stream: one WebSocket, one JSON text frame per event (service/events.py).

``GET /v1/events`` upgraded to a WebSocket, with ``stream`` and ``after`` (the last position
seen) to resume after a disconnect, and ``all_projects`` for the host's administrator. The
first frame says where the stream is (``{"stream", "position", "gap"}``); then the events the
subscriber missed, then each event as it happens. A subscriber that falls behind gets
``{"end": "overflow"}`` and is closed: it resumes from its last position.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from gureum.api.auth import ws_scope
from gureum.api.deps import ws_services
from gureum.errors import Forbidden, GureumError
from gureum.model.tenancy import Role

router = APIRouter(prefix="/v1", tags=["events"])


@router.websocket("/events")
async def events(
    websocket: WebSocket,
    stream: str | None = None,
    after: int | None = None,
    all_projects: bool = False,
) -> None:
    svc = ws_services(websocket)
    try:
        scope = ws_scope(websocket, Role.VIEWER)
        if all_projects and not scope.principal.superuser:
            raise Forbidden("all_projects is for the host's administrator")
    except GureumError as exc:
        await websocket.accept()
        await websocket.send_json({"error": {"code": exc.code, "message": exc.message}})
        await websocket.close(code=4000 + min(exc.status, 999))
        return
    # The project's events; the host's own (image builds) for its administrator, as the
    # operations list shows them.
    projects: set[str | None] | None = {scope.project_id}
    if all_projects:
        projects = None
    elif scope.principal.superuser and projects is not None:
        projects.add(None)
    bus = svc.events
    sub, resumed = bus.subscribe(projects, stream=stream, after=after)
    try:
        await websocket.accept()
        await websocket.send_json(
            {"stream": bus.stream, "position": bus.position, "gap": resumed.gap}
        )
        for past in resumed.missed:
            await websocket.send_json(past.to_dict(bus.stream))
        gone = asyncio.create_task(_closed(websocket))
        while True:
            nxt = asyncio.create_task(sub.queue.get())
            await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                nxt.cancel()
                break
            event = nxt.result()
            if event is None:  # it fell behind: it resumes from its last position
                await websocket.send_json({"end": "overflow"})
                await websocket.close(code=1000, reason="fell behind")
                break
            await websocket.send_json(event.to_dict(bus.stream))
        gone.cancel()
    except (WebSocketDisconnect, ConnectionError, RuntimeError):
        pass
    finally:
        bus.unsubscribe(sub)


async def _closed(websocket: WebSocket) -> None:
    """Until the client leaves (what it sends is not read for anything else)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
