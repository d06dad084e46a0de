"""The web console: its files under ``/ui/``, its sign-in, and one-time sign-in codes.

The console is static files (``api/ui/``: HTML, CSS, JavaScript modules, xterm.js vendored) that
call the same API routes as the CLI with a session cookie instead of a token, so the
authorisation matrix covers every action it offers. What it may load and run is fixed by a
content security policy on every file: scripts of this origin only, nothing inline, no frames.
"""

from __future__ import annotations

import mimetypes
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from gureum.api import sessions
from gureum.api.auth import AnyUser
from gureum.api.deps import services
from gureum.errors import Forbidden, NotFound, Unauthenticated
from gureum.service.core import Services

router = APIRouter(tags=["console"])
Svc = Annotated[Services, Depends(services)]

# xterm.js styles its rows with a <style> element of its own: styles may be inline, scripts may
# not (a style cannot run code; an injected script could act as the signed-in user).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PUBLIC = {"x-gureum-role": "public"}


@cache
def _files() -> dict[str, tuple[bytes, str]]:
    """Every file of the console, by its path under /ui/ (read once: a few hundred KiB). Only
    these answer: a path is looked up, never joined onto a folder."""
    root = resources.files("gureum.api") / "ui"
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, f"{name}/")
            elif not entry.name.startswith("."):
                kind = mimetypes.guess_type(entry.name)[0] or "text/plain"
                if entry.name.endswith((".js", ".mjs")):
                    kind = "text/javascript"
                found[name] = (entry.read_bytes(), kind)

    walk(root, "")
    return found


def _file(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        raise NotFound(f"no file {name!r} in the console")
    body, kind = found
    charset = "; charset=utf-8" if kind.startswith("text/") or kind.endswith("json") else ""
    return Response(body, media_type=kind + charset, headers=SECURITY_HEADERS)


@router.get("/ui", include_in_schema=False, openapi_extra=PUBLIC)
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", include_in_schema=False, openapi_extra=PUBLIC)
async def ui_index() -> Response:
    return _file("index.html")


class SignIn(BaseModel):
    token: str | None = Field(default=None, max_length=512)
    code: str | None = Field(default=None, max_length=128)


def _session_answer(session: sessions.Session, status: int = 200) -> JSONResponse:
    who = session.principal
    return JSONResponse(
        {"user": who.name, "superuser": who.superuser, "csrf": session.csrf},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


@router.post("/ui/session", include_in_schema=False, openapi_extra=PUBLIC)
async def sign_in(body: SignIn, request: Request, svc: Svc) -> JSONResponse:
    """Trade a token (or a one-time code from ``gureum ui``) for a session cookie; the answer
    carries the session's CSRF value, which the page sends back on every change."""
    app = request.app
    transport = app.state.transport
    if transport == "unix":
        raise Forbidden("sign in through `gureum ui` or the TCP listener, not the admin socket")
    # Guessing costs time: a few tries a second per address (codes and tokens alike).
    app.state.signin_limiter.take(request.client.host if request.client else "-")
    if body.code:
        found = app.state.sessions.redeem(body.code)
        if found is None:
            raise Unauthenticated("this sign-in code is unknown, used or expired (a minute)")
        principal, secret = found
        if principal.superuser and transport != "ui":
            # Root's session exists only behind `gureum ui` on the host, never over TCP.
            raise Forbidden("the administrator's console is `gureum ui` on the service's host")
        if secret is not None:  # the token it carries may have been revoked since
            principal = svc.tenancy.authenticate(secret)
    elif body.token:
        secret = body.token.strip()
        principal = svc.tenancy.authenticate(secret)
    else:
        raise Unauthenticated("give a token or a sign-in code")
    request.state.principal = principal  # the audit names who signed in
    sid, session = app.state.sessions.open(principal, secret, transport)
    answer = _session_answer(session, 201)
    answer.headers["Set-Cookie"] = sessions.set_cookie_header(sid)
    return answer


@router.get("/ui/session", include_in_schema=False, openapi_extra=PUBLIC)
async def current_session(request: Request, svc: Svc) -> JSONResponse:
    """Who this browser's session is, and its CSRF value (a reloaded page asks again)."""
    session = request.app.state.sessions.get(sessions.cookie_value(dict(request.headers)))
    if session is None or session.transport != request.app.state.transport:
        raise Unauthenticated("no console session: sign in")
    if session.secret is not None:
        svc.tenancy.authenticate(session.secret)  # revoked since: the session is over
    return _session_answer(session)


@router.delete("/ui/session", include_in_schema=False, openapi_extra=PUBLIC)
async def sign_out(request: Request) -> JSONResponse:
    headers = dict(request.headers)
    sid = sessions.cookie_value(headers)
    session = request.app.state.sessions.get(sid)
    if session is not None:
        if not session.csrf_matches(headers.get(sessions.CSRF_HEADER)):
            raise Forbidden("signing out needs the session's CSRF value", code="csrf")
        request.state.principal = session.principal
        request.app.state.sessions.close(sid)
    answer = JSONResponse({"signed_out": True})
    answer.headers["Set-Cookie"] = sessions.clear_cookie_header()
    return answer


@router.get("/ui/{name:path}", include_in_schema=False, openapi_extra=PUBLIC)
async def ui_file(name: str) -> Response:
    return _file(name)


class CodeOut(BaseModel):
    code: str
    expires_in_s: float


@router.post(
    "/v1/ui/codes", response_model=CodeOut, status_code=201, openapi_extra={"x-gureum-role": "user"}
)
async def sign_in_code(request: Request, who: AnyUser) -> dict[str, object]:
    """A one-time code that signs a browser in as the caller (``gureum ui``): valid a minute,
    used once. A caller with a token passes it on to the session (revoking it ends both)."""
    header = request.headers.get("authorization", "")
    secret = header.partition(" ")[2].strip() or None
    if secret is None and request.app.state.transport != "unix":
        # A console session may not make codes: it would renew itself past its lifetime.
        raise Forbidden("sign-in codes are made with a token or on the admin socket")
    code = request.app.state.sessions.code(who, secret)
    return {"code": code, "expires_in_s": sessions.CODE_S}
