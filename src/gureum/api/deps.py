"""Request dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request, WebSocket

from gureum.service.core import Services


def services(request: Request) -> Services:
    return request.app.state.services


def ws_services(websocket: WebSocket) -> Services:
    return websocket.app.state.services
