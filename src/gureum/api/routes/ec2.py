"""The EC2 Query API at ``/ec2`` (docs/ec2.md): AWS SigV4 instead of a token, EC2's XML instead of
JSON, and each action mapped onto gureum's own services (``api/ec2/actions.py``).

It answers on every listener, but is meant for the TCP one (HTTPS with the service's certificate):
``aws --endpoint-url https://HOST:PORT/ec2 ...``. The signature decides who calls and in which
project (the access key's, ``gureum token create --aws``); the caller's role there decides what
they may do, as for every other route. Every action that changes something is audited here
(``EC2 RunInstances``...), whichever HTTP method carried it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gureum.api.auth import throttle
from gureum.api.deps import services
from gureum.api.ec2 import resources, sigv4, xml
from gureum.api.ec2.actions import ACTIONS, Context
from gureum.api.ec2.errors import Ec2Error, auth_failure, from_gureum
from gureum.api.ec2.query import Params
from gureum.api.middleware import record_unauthenticated
from gureum.errors import GureumError, Unauthenticated
from gureum.model.tenancy import Principal
from gureum.service.core import Services

router = APIRouter(tags=["ec2"])
Svc = Annotated[Services, Depends(services)]
XML = "text/xml"
READ_ONLY = ("Describe", "Get")


@router.api_route(
    "/ec2",
    methods=["GET", "POST"],
    include_in_schema=False,
    openapi_extra={"x-gureum-role": "public"},
)
@router.api_route(
    "/ec2/",
    methods=["GET", "POST"],
    include_in_schema=False,
    openapi_extra={"x-gureum-role": "public"},
)
async def ec2(request: Request, svc: Svc) -> Response:
    request_id = str(uuid.uuid4())
    body = await request.body()
    query = parse_qsl(request.url.query, keep_blank_values=True)
    form = []
    if body and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        try:
            form = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return _error(Ec2Error("InvalidParameterValue", "the body is not UTF-8"), request_id)
    action = ""
    sts = False
    try:
        params = Params([*query, *form])
        action = params.get("Action") or ""
        sts = action == "GetCallerIdentity"
        principal, project_id = _authenticate(request, svc, dict(query), body)
        if sts:
            arn = f"arn:aws:iam::{project_id}:user/{principal.name}"
            answer = {"Arn": arn, "UserId": principal.user_id, "Account": project_id}
            return Response(xml.sts_answer(action, request_id, answer), media_type=XML)
        handler = ACTIONS.get(action) or resources.ACTIONS.get(action)
        if handler is None:
            raise Ec2Error(
                "InvalidAction", f"The action {action[:60]!r} is not valid for this web service."
            )
        scope = svc.tenancy.scope(principal, project_id)
        request.state.principal, request.state.scope = principal, scope
        ctx = Context(svc, scope, svc.config.ec2_region, params, request.app.state.ec2_terminated)
        result = await handler(ctx)
    except Ec2Error as exc:
        _audit(request, svc, action, exc.status)
        return _error(exc, request_id, sts)
    except GureumError as exc:
        _audit(request, svc, action, exc.status)
        return _error(from_gureum(exc), request_id, sts)
    _audit(request, svc, action, 200)
    return Response(xml.answer(action, request_id, result), media_type=XML)


def _authenticate(
    request: Request, svc: Services, query: dict[str, str], body: bytes
) -> tuple[Principal, str]:
    """(who, the project) from the request's SigV4 signature, checked against its key."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    signed = sigv4.read(headers, query)
    sigv4.check_scope(signed, svc.config.ec2_region, time.time())
    try:
        principal, secret, project_id = svc.tenancy.authenticate_access_key(signed.access_key_id)
    except Unauthenticated:
        raise auth_failure(
            "AWS was not able to validate the provided access credentials (unknown, revoked or "
            "expired access key)"
        ) from None
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"{request.url.scheme}://{headers.get('host', '')}{raw_path}"
    url += f"?{raw_query}" if raw_query else ""
    sigv4.verify(signed, secret, method=request.method, url=url, headers=headers, body=body)
    try:
        throttle(request.app, principal)
    except GureumError as exc:
        raise from_gureum(exc) from None
    return principal, project_id


def _audit(request: Request, svc: Services, action: str, result: int) -> None:
    """A change through EC2 in the audit (by whom, in which project, what, how it ended);
    reads are not recorded, as elsewhere. A refused signature is recorded as every call without
    a valid identity is (its reason and address, rate limited per address)."""
    principal = getattr(request.state, "principal", None)
    scope = getattr(request.state, "scope", None)
    if principal is None and result in (401, 403):
        record_unauthenticated(request.scope, f"EC2 {action[:60]}: signature refused", result)
        return
    if principal is None or not action or action.startswith(READ_ONLY):
        return
    svc.tenancy.record(
        user=principal.name,
        project=scope.project.name if scope else None,
        project_id=scope.project.id if scope else None,
        action=f"EC2 {action[:60]}",
        target=None,
        result=result,
        detail=None,
    )


def _error(exc: Ec2Error, request_id: str, sts: bool = False) -> Response:
    return Response(
        xml.error(exc.code, exc.message, request_id, sts), status_code=exc.status, media_type=XML
    )
