"""Long work's one answer: 202 Accepted and the operation to follow
(``GET /v1/operations/{operation}``), whatever the work (boot, copy, build, verify)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gureum.api.schemas import OperationOut
from gureum.model.operation import Operation

Route = TypeVar("Route", bound=Callable[..., Any])


def starts_operation(router: APIRouter, path: str, role: str) -> Callable[[Route], Route]:
    """``POST path``, answered with ``accepted``: the operation the route started."""
    return router.post(
        path, status_code=202, response_model=OperationOut, openapi_extra={"x-gureum-role": role}
    )


def accepted(op: Operation) -> JSONResponse:
    return JSONResponse(op.to_dict(), status_code=202)
