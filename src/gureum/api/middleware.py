"""ASGI middleware: the audit trail and the request size limit."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gureum.api.errors import error_headers
from gureum.errors import GureumError, RateLimited
from gureum.service.tenancy import ANONYMOUS

log = logging.getLogger(__name__)

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _streamed(path: str) -> bool:
    """Routes whose body is streamed to disk (a backup archive, an image file): bounded by
    their own limits, not the request size limit."""
    return path.startswith("/v1/backups/") or (
        path.startswith("/v1/images/") and path.endswith("/import")
    )


class AuditMiddleware:
    """Records every state-changing call: user, project, action, target, result, time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or _ec2(scope["path"]):
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        # A creation's answer (201, or 202 with the new instance) says what it made: kept, up
        # to CREATED_MAX bytes, to name it in the audit.
        body = bytearray()

        operation: list[str] = []  # from the answer's Location, when it is an operation's

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                for key, value in message.get("headers") or []:
                    if key.lower() == b"location" and value.startswith(OPERATIONS):
                        operation.append(value[len(OPERATIONS) :].decode("latin-1"))
            elif message["type"] == "http.response.body" and status["code"] in (201, 202):
                body.extend(message.get("body", b"")[: CREATED_MAX + 1 - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            made = _created(bytes(body)) if 0 < len(body) <= CREATED_MAX else None
            if made is not None and operation and made[1] == operation[0]:
                made = None  # the answer is the operation itself: it is not what was made
            named = (scope.get("state") or {}).get("audit_made")
            if isinstance(named, str):  # the route named what its operation makes
                made = (named, None)
            public = _public(scope["path"])
            if public and status["code"] >= 400:
                # A refused sign-in (or a change asked of a console file): anyone can send
                # these, so they are recorded as calls without an identity are, rate limited.
                record_unauthenticated(scope, "console sign-in refused", status["code"])
            elif public and (scope.get("state") or {}).get("principal") is None:
                pass  # a sign-out with no session: nothing happened
            else:
                self._record(scope, status["code"], made, operation[0] if operation else None)

    @staticmethod
    def _record(
        scope: Scope,
        result: int,
        made: tuple[str, str | None] | None = None,
        operation: str | None = None,
    ) -> None:
        route = scope.get("route")
        action = f"{scope['method']} {getattr(route, 'path', scope['path'])}"
        target = "/".join(str(v) for v in (scope.get("path_params") or {}).values()) or None
        detail: dict[str, str] = {}
        if made is not None:  # the new thing's name (under its parent's, if any), and its id
            name, ident = made
            if not target:
                target = name
            elif target.rsplit("/", 1)[-1] != name:  # a rule's answer is its group: named
                target = f"{target}/{name}"
            if ident:
                detail["created"] = ident
        if operation:
            detail["operation"] = operation
        _write(scope, action, target, result, detail or None)


CREATED_MAX = 64 * 1024
OPERATIONS = b"/v1/operations/"


def _created(body: bytes) -> tuple[str, str | None] | None:
    """(name, id) of what a creation's answer describes: the object, or its ``instance`` (a
    launch, a clone); only those two fields (a new token's secret is never kept)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("instance"), dict):
        data = data["instance"]
    if not isinstance(data, dict):
        return None
    name, ident = data.get("name"), data.get("id")
    ident = ident if isinstance(ident, str) else None
    label = name if isinstance(name, str) and name else ident
    return (label, ident) if label else None


def audit_console(scope: Scope, ref: str, result: int, detail: dict[str, Any] | None) -> None:
    """A console session in the audit: who, which VM, how it ended, and how many bytes were
    typed and for how long; never what was typed (passwords go through consoles)."""
    _write(scope, "CONSOLE /v1/instances/{ref}/console", ref, result, detail)


def audit_tunnel(scope: Scope, ref: str, result: int, detail: dict[str, Any] | None) -> None:
    """An SSH tunnel in the audit, as a console session: who, which VM, how it ended, how long
    and how many bytes each way (never the bytes: they are ssh's, encrypted anyway)."""
    _write(scope, "SSH /v1/instances/{ref}/ssh/tunnel", ref, result, detail)


def _write(
    scope: Scope, action: str, target: str | None, result: int, detail: dict[str, Any] | None = None
) -> None:
    state: dict[str, Any] = scope.get("state") or {}
    principal = state.get("principal")
    project = state.get("scope")
    svc = scope["app"].state.services
    try:
        svc.tenancy.record(
            user=principal.name if principal else ANONYMOUS,
            project=project.project.name if project else None,
            project_id=project.project.id if project else None,
            action=action,
            target=target,
            result=result,
            detail=detail,
        )
    except Exception:  # the audit must never turn a done action into an error
        log.exception("cannot record audit entry for %s", action)


class PayloadTooLarge(GureumError):
    code = "payload-too-large"
    status = 413


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes (announced or streamed), backups aside.

    A streamed (chunked) body is counted as it is read; past the limit the read fails, and
    whatever the route then makes of that (FastAPI answers a failed body read with a 400) is
    replaced by the 413 the caller is owed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streamed(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(send, self.limit)
            return
        seen = 0
        too_large = started = False

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise PayloadTooLarge(f"request body over {self.limit} bytes")
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if too_large:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _refuse(send, self.limit)
                return  # the app's own answer to a body it could not read is not sent
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(PayloadTooLarge):  # the app let it through: ours to answer
            await self.app(scope, counted, answer)
        if too_large and not started:
            await _refuse(send, self.limit)


async def _refuse(send: Send, limit: int) -> None:
    await _respond(send, 413, PayloadTooLarge(f"request body over {limit} bytes").to_dict(), [])


class AuthMiddleware:
    """Identifies every request before anything else runs (routing, body parsing): without a
    valid identity nothing answers but 401, and a rate-limited token gets 429."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from gureum.api.auth import identify

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if scope["app"].state.transport == "ui" and not _loopback_host(headers.get("host", "")):
            # `gureum ui`'s tunnel is reached as localhost: another name is a page of another
            # site that had its name point at 127.0.0.1 (DNS rebinding), refused outright.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4421})
            else:
                refusal = {"code": "misdirected", "message": "the console tunnel is localhost's"}
                await _respond(send, 421, {"error": refusal}, [])
            return
        if _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            principal = identify(
                scope["app"], headers, scope.get("method", "GET"), scope["type"] == "websocket"
            )
        except GureumError as exc:
            if exc.status == 401:
                record_unauthenticated(scope, exc.message)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4000 + exc.status})
                return
            extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
            await _respond(send, exc.status, exc.to_dict(), extra)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _ec2(path: str) -> bool:
    return path == "/ec2" or path.startswith("/ec2/")


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("localhost", "127.0.0.1", "[::1]")


def _public(path: str) -> bool:
    """The web console's files and its sign-in (``routes/ui.py``): they answer without an
    identity (the files hold no data; sign-in checks what it is given); and the EC2 API
    (``routes/ec2.py``), which checks its own signatures and audits its own changes."""
    return path in ("/ui", "/ec2") or path.startswith(("/ui/", "/ec2/"))


def record_unauthenticated(scope: Scope, reason: str, result: int = 401) -> None:
    """A call refused for want of a valid identity, in the audit: method, path, reason and the
    caller's address, never the token. Past a burst, at most one a second per address is
    recorded, so that anyone who can reach the port cannot fill the audit log."""
    app = scope["app"]
    client = (scope.get("client") or ("-", 0))[0]
    try:
        app.state.unauthenticated_audit.take(client)
    except RateLimited:
        return
    method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
    try:
        app.state.services.tenancy.record(
            user=ANONYMOUS,
            project=None,
            action=f"{method} {scope['path'][:200]}",
            target=None,
            result=result,
            detail={"reason": reason, "client": client},
        )
    except Exception:  # the audit must never turn a refusal into an error
        log.exception("cannot record audit entry for an unauthenticated call")


async def _respond(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
