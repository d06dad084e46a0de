"""Authentication and authorisation for every route, as FastAPI dependencies.

Every route declares what it needs, and nothing answers without it (a test walks the OpenAPI
document and calls every route as every role to prove it):

- ``AnyUser``: a valid identity (token, or root on the local socket);
- ``Viewer`` / ``Member`` / ``Admin``: that role or better in the request's project
  (``X-Gureum-Project``); a project where the caller has no role does not exist for them;
- ``Super``: the administrator (root on the local socket, no token).

Rate limiting is per token and per user (the local root path is not limited): a token bucket
for each, answered with 429 and Retry-After when either is empty, so that minting more tokens
does not buy more requests.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from starlette.applications import Starlette

from gureum.api import sessions
from gureum.errors import Forbidden, RateLimited, Unauthenticated
from gureum.model.tenancy import Principal, Role, Scope
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER

PROJECT_HEADER = "x-gureum-project"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> None:
        take_all((self, key))

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)


def take_all(*buckets: tuple[RateLimiter, str]) -> None:
    """One request against several buckets (its token's, its user's): it passes only if each
    has room, and only then is it counted in each (a refused request costs nothing)."""
    now = time.monotonic()
    levels = [
        (limiter, key, limiter._level(key, now)) for limiter, key in buckets if limiter.rate > 0
    ]
    waits = [(1 - level) / limiter.rate for limiter, _, level in levels if level < 1]
    for limiter, key, level in levels:
        limiter._buckets[key] = (level if waits else level - 1, now)
    if waits:
        wait = max(waits)
        raise RateLimited(f"too many requests; retry in {wait:.1f} s", retry_after=wait)


def identify(
    app: Starlette, headers: dict[str, str], method: str, websocket: bool = False
) -> Principal:
    """Who is calling, from the request headers and the transport it came in on: a token, the
    web console's session cookie, or root on the local socket."""
    header = headers.get("authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("use an Authorization: Bearer TOKEN header")
        return _with_token(app, secret.strip())
    if app.state.transport == "unix":
        return SUPERUSER  # the socket is root's alone (mode 0600)
    sid = sessions.cookie_value(headers)
    if sid is not None:
        return _with_session(app, sid, headers, method, websocket)
    raise Unauthenticated("this endpoint needs a token (Authorization: Bearer TOKEN)")


def _with_token(app: Starlette, secret: str) -> Principal:
    svc: Services = app.state.services
    principal = svc.tenancy.authenticate(secret)
    throttle(app, principal)
    return principal


def throttle(app: Starlette, principal: Principal) -> None:
    """One request against its token's and its user's buckets (RateLimited when either is
    empty): every way of calling with a token, EC2's signed requests included."""
    state = app.state
    take_all(
        (state.limiter, principal.token_id or principal.name),
        (state.user_limiter, principal.user_id or principal.name),
    )


def _with_session(
    app: Starlette, sid: str, headers: dict[str, str], method: str, websocket: bool
) -> Principal:
    """The console's session: its token checked again (revoked: the session ends with it); a
    state-changing request must carry the session's CSRF value in a header (a page of another
    site can make the browser send the cookie, not read the value), and a WebSocket must come
    from a page of this origin."""
    session = app.state.sessions.get(sid)
    if session is None or session.transport != app.state.transport:
        raise Unauthenticated("the console session has ended: sign in again")
    if websocket:
        origin, host = headers.get("origin", ""), headers.get("host", "")
        if not host or origin.partition("://")[2] != host:
            raise Forbidden("a console WebSocket must come from the console's own origin")
    elif method not in SAFE_METHODS and not session.csrf_matches(headers.get(sessions.CSRF_HEADER)):
        raise Forbidden(
            "this request needs the session's CSRF value in an X-CSRF-Token header",
            code="csrf",
        )
    if session.secret is None:
        return session.principal
    return _with_token(app, session.secret)


def _identify(conn: Request | WebSocket) -> Principal:
    # The authentication middleware has already identified every request; this reads it.
    principal = getattr(conn.state, "principal", None)
    if principal is None:
        # (a session's CSRF check needs the method)
        method = conn.method if isinstance(conn, Request) else "GET"
        principal = identify(conn.app, dict(conn.headers), method, isinstance(conn, WebSocket))
        conn.state.principal = principal
    return principal


async def principal(request: Request) -> Principal:
    return _identify(request)


async def ws_principal(websocket: WebSocket) -> Principal:
    return _identify(websocket)


def enter(conn: Request | WebSocket, who: Principal, project_ref: str | None, role: Role) -> Scope:
    """The caller acting in a project (None: their only one) with at least ``role``; kept on
    the request, where the audit finds it."""
    svc: Services = conn.app.state.services
    scope = svc.tenancy.scope(who, project_ref)
    conn.state.scope = scope
    svc.tenancy.require(scope, role)
    return scope


def _scope(role: Role):
    async def dependency(request: Request, who: Annotated[Principal, Depends(principal)]) -> Scope:
        return enter(request, who, request.headers.get(PROJECT_HEADER), role)

    return dependency


async def superuser(who: Annotated[Principal, Depends(principal)]) -> Principal:
    from gureum.service.tenancy import TenancyService

    TenancyService.require_superuser(who)
    return who


def ws_scope(websocket: WebSocket, role: Role) -> Scope:
    """A WebSocket's project: the header, or ``?project=`` (a browser cannot set headers on
    a WebSocket)."""
    project = websocket.headers.get(PROJECT_HEADER) or websocket.query_params.get("project")
    return enter(websocket, _identify(websocket), project, role)


def _path_scope(role: Role):
    """For /v1/projects/{project}/...: the project named in the path, checked before anything
    else about the request (its body included)."""

    async def dependency(
        request: Request, project: str, who: Annotated[Principal, Depends(principal)]
    ) -> Scope:
        return enter(request, who, project, role)

    return dependency


AnyUser = Annotated[Principal, Depends(principal)]
ProjectViewer = Annotated[Scope, Depends(_path_scope(Role.VIEWER))]
ProjectAdmin = Annotated[Scope, Depends(_path_scope(Role.ADMIN))]
Viewer = Annotated[Scope, Depends(_scope(Role.VIEWER))]
Member = Annotated[Scope, Depends(_scope(Role.MEMBER))]
Admin = Annotated[Scope, Depends(_scope(Role.ADMIN))]
Super = Annotated[Principal, Depends(superuser)]
