"""Long work's one answer: 202 Accepted and the operation to follow
(``GET /v1/operations/{operation}``), whatever the work (boot, copy, build, verify)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gureum.api.schemas import OperationOut
from gureum.model.operation import Operation

Route = TypeVar("Route", bound=Callable[..., Any])


def starts_operation(router: APIRouter, path: str, role: str) -> Callable[[Route], Route]:
    """``POST path``, answered with ``accepted``: the operation the route started."""
    return router.post(
        path, status_code=202, response_model=OperationOut, openapi_extra={"x-gureum-role": role}
    )


def accepted(op: Operation, body: dict[str, Any] | None = None) -> JSONResponse:
    """202 with the operation (or ``body``, which holds it) and, as HTTP has it, the operation's
    address in ``Location``; the audit files the call under that operation's id."""
    return JSONResponse(
        op.to_dict() if body is None else body,
        status_code=202,
        headers={"Location": f"/v1/operations/{op.id}"},
    )


def name_what_is_made(request: Request, name: str) -> None:
    """For a route whose answer is an operation (not the thing it makes): the name the audit
    gives what is made, under the route's own target (``web/before`` for a snapshot)."""
    request.state.audit_made = name
