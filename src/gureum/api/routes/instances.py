"""Instances: launch, inspect, control, exec, console."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse

from gureum.api.accepted import accepted, starts_operation
from gureum.api.auth import Member, Viewer, ws_scope
from gureum.api.deps import services, ws_services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.middleware import audit_console, audit_tunnel
from gureum.api.relay import Relayed, relay
from gureum.api.schemas import ExecIn, ExecOut, InstanceOut, LaunchIn, LaunchOut, SshOut
from gureum.errors import Forbidden, GureumError, InvalidInput
from gureum.model.tenancy import Role
from gureum.service.core import Services
from gureum.service.instances import LaunchRequest
from gureum.units import GIB

router = APIRouter(prefix="/v1/instances", tags=["instances"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


# The views are built field by field by the service; checking them against the model again on
# every read cost more than reading them (2 ms of a 5.6 ms list of 100). The model still
# documents the answer, and the schema-driven fuzz test checks every answer against it.
@router.get("", response_model=list[InstanceOut], openapi_extra={"x-gureum-role": "viewer"})
async def list_instances(
    svc: Svc,
    scope: Viewer,
    all_projects: Annotated[
        bool, Query(description="every project's instances (the host's administrator only)")
    ] = False,
) -> JSONResponse:
    if all_projects and not scope.principal.superuser:
        raise Forbidden("all_projects is for the host's administrator")
    project = None if all_projects else scope.project_id
    return JSONResponse([_used(svc, v) for v in svc.instances.views(svc.instances.list(project))])


def _used(svc: Services, view: dict[str, object]) -> dict[str, object]:
    """The view with what the last metrics rounds saw it use (the console's list shows it)."""
    view["usage"] = svc.metrics.now(str(view["id"]))
    return view


@router.post(
    "", status_code=202, response_model=LaunchOut, openapi_extra={"x-gureum-role": "member"}
)
async def launch(body: LaunchIn, svc: Svc, scope: Member) -> JSONResponse:
    """Create and boot an instance. Answers at once with the operation to wait on."""
    if body.disk_gib is not None and not 0 < body.disk_gib < 1e6:
        raise InvalidInput(f"disk must be a positive size, not {body.disk_gib} GiB")
    req = LaunchRequest(
        name=body.name,
        image=body.image,
        cpus=body.cpus,
        memory_mib=body.memory_mib,
        disk_bytes=None if body.disk_gib is None else int(body.disk_gib * GIB),
        networks=tuple(body.networks),
        secgroups=tuple(body.secgroups),
        user_data=body.user_data,
        ssh_keys=tuple(body.ssh_keys),
        keypairs=tuple(body.keypairs),
        autostart=body.autostart,
        container=body.container,
        host=body.host,
        spread_group=body.spread_group,
    )
    inst, op = await svc.templates.launch(req, scope.project_id, cold=body.cold)
    return accepted(op, {"instance": svc.instances.view(inst), "operation": op.to_dict()})


@router.get("/{ref}", response_model=InstanceOut, openapi_extra={"x-gureum-role": "viewer"})
async def get_instance(ref: str, svc: Svc, scope: Viewer) -> JSONResponse:
    """By name or id."""
    return JSONResponse(_used(svc, svc.instances.view(svc.instances.get(ref, scope.project_id))))


@starts_operation(router, "/{ref}/start", "member")
async def start(ref: str, svc: Svc, scope: Member) -> JSONResponse:
    return accepted(await svc.instances.start(ref, scope.project_id))


@starts_operation(router, "/{ref}/stop", "member")
async def stop(ref: str, svc: Svc, scope: Member) -> JSONResponse:
    """Graceful: ACPI power button, then QMP quit, then kill, within the stop timeout."""
    return accepted(await svc.instances.stop(ref, scope.project_id))


@starts_operation(router, "/{ref}/restart", "member")
async def restart(ref: str, svc: Svc, scope: Member) -> JSONResponse:
    return accepted(await svc.instances.restart(ref, scope.project_id))


@router.delete("/{ref}", response_model=InstanceOut, openapi_extra={"x-gureum-role": "member"})
async def delete(ref: str, svc: Svc, scope: Member, force: bool = False) -> dict[str, object]:
    """Removes the instance, its disk and its runtime files. A running one needs ``force``."""
    inst = await svc.instances.delete(ref, force=force, project_id=scope.project_id)
    view = svc.instances.view(inst)
    view["state"] = "deleted"
    return view


@router.post("/{ref}/exec", response_model=ExecOut, openapi_extra={"x-gureum-role": "member"})
async def exec_command(ref: str, body: ExecIn, svc: Svc, scope: Member) -> dict[str, object]:
    """Run a command in the guest through its agent and wait for it to exit."""
    stdin = None
    if body.stdin_b64:
        try:
            stdin = base64.b64decode(body.stdin_b64, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
            raise InvalidInput("stdin_b64 is not valid base64") from exc
    out = await svc.instances.exec(
        ref, body.command, stdin=stdin, timeout=body.timeout_s, project_id=scope.project_id
    )
    return {
        "exit_code": out["exit_code"],
        "signal": out["signal"],
        # exec's answer holds the output as bytes (its dict is typed as object).
        "stdout_b64": base64.b64encode(out["stdout"]).decode(),  # type: ignore[arg-type]
        "stderr_b64": base64.b64encode(out["stderr"]).decode(),  # type: ignore[arg-type]
        "truncated": out["truncated"],
    }


@router.get(
    "/{ref}/console/log",
    response_class=PlainTextResponse,
    openapi_extra={"x-gureum-role": "member"},
)
async def console_log(
    ref: str,
    svc: Svc,
    scope: Member,
    tail_bytes: Annotated[int, Query(ge=0, le=64 * 1024 * 1024)] = 65536,
) -> PlainTextResponse:
    """The serial console's recorded output (the last ``tail_bytes``; 0 = all). Members only,
    as the console itself: it is what the guest printed, logins and secrets included."""
    data = await svc.instances.console_log(ref, scope.project_id, tail_bytes)
    return PlainTextResponse(data.decode(errors="replace"))


@router.get("/{ref}/ssh", response_model=SshOut, openapi_extra={"x-gureum-role": "member"})
async def ssh_access(ref: str, svc: Svc, scope: Member) -> dict[str, object]:
    """Who logs in, where, and the host keys to expect (recorded the first time asked)."""
    return await svc.ssh.access(ref, scope.project_id)


@router.websocket("/{ref}/ssh/tunnel")
async def ssh_tunnel(websocket: WebSocket, ref: str) -> None:
    """Binary frames both ways: a TCP stream to the guest's port 22, made inside its network
    (members only, as the console). ``gureum ssh`` gives it to OpenSSH as its ProxyCommand."""
    svc: Services = ws_services(websocket)
    # Accepted first: connecting to the guest may take its 10 s, longer than a client waits for
    # the handshake, and a refusal must reach the caller as a frame that says why.
    await websocket.accept()
    try:
        scope = ws_scope(websocket, Role.MEMBER)
        sock, release = await svc.ssh.connect(ref, scope.project_id)
    except GureumError as exc:
        audit_tunnel(websocket.scope, ref, exc.status, None)
        await websocket.send_json({"error": {"code": exc.code, "message": exc.message}})
        await websocket.close(code=4000 + min(exc.status, 999))
        return
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        release()
        raise
    started = time.monotonic()

    async def to_guest(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    done = Relayed()
    try:
        await relay(websocket, lambda: reader.read(65536), to_guest, done,
                    ended="the guest closed the connection")  # fmt: skip
    finally:
        writer.close()
        release()
        session = {"seconds": round(time.monotonic() - started, 1), "bytes_in": done.bytes_in,
                   "bytes_out": done.bytes_out}  # fmt: skip
        audit_tunnel(websocket.scope, ref, 200, session)


@router.websocket("/{ref}/console")
async def console(websocket: WebSocket, ref: str) -> None:
    """Interactive serial console: binary frames both ways, raw bytes."""
    svc: Services = ws_services(websocket)
    try:
        scope = ws_scope(websocket, Role.MEMBER)
        serial = svc.instances.console(ref, scope.project_id)
    except GureumError as exc:
        audit_console(websocket.scope, ref, exc.status, None)
        await websocket.accept()
        await websocket.send_json({"error": {"code": exc.code, "message": exc.message}})
        await websocket.close(code=4000 + min(exc.status, 999))
        return
    await websocket.accept()
    output = serial.attach()
    started = time.monotonic()
    done = Relayed()
    try:
        await relay(websocket, output.get, serial.write, done, ended="the VM stopped", text=True)
    finally:
        serial.detach(output)
        session = {"input_bytes": done.bytes_in, "seconds": round(time.monotonic() - started, 1)}
        audit_console(websocket.scope, ref, 200, session)
