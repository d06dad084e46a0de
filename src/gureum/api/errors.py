"""The one mapping from errors to HTTP: ``{"error": {"code", "message"}}`` with a status."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gureum.errors import GureumError, RateLimited, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

COMMON_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "invalid input"},
    401: {"description": "no valid identity"},
    403: {"description": "the caller's role does not allow this"},
    413: {"description": "request body too large"},
    429: {"description": "rate limited (see Retry-After)"},
    503: {"description": "something it needs is not answering, the store say (see Retry-After)"},
    404: {"description": "no such resource"},
    409: {"description": "conflicts with the current state"},
}


# The codes of the errors routing itself answers (no route at that path, or not with that
# method); any other HTTP error the framework raises is ``http-error``.
ROUTING_CODES = {404: "not-found", 405: "method-not-allowed"}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def error_headers(exc: GureumError) -> dict[str, str]:
    """The headers an error's answer carries: when to retry, how to authenticate. The one
    place for them, whether the error is answered by a route or by the auth middleware."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, Unavailable):
        return {"Retry-After": "5"}
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def install(app: FastAPI) -> None:
    @app.exception_handler(GureumError)
    async def _gureum(_: Request, exc: GureumError) -> JSONResponse:
        response = error_response(exc.status, exc.code, exc.message)
        response.headers.update(error_headers(exc))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid-input", _describe(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = ROUTING_CODES.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")
