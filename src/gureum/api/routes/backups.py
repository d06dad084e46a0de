"""Backup archives: export (a stream out), import and verify (a stream in)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from gureum.api.accepted import accepted, starts_operation
from gureum.api.auth import Member
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import InstanceOut
from gureum.service.core import Services

router = APIRouter(tags=["backups"], responses=COMMON_RESPONSES)

# A client that takes nothing of an export for this long is let go: its transfer slot, thread
# and scratch copy of the disk are freed (a client that never reads would keep them forever).
SEND_TIMEOUT_S = 60.0


class _ExportResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def patient_send(message: Message) -> None:
            await asyncio.wait_for(send(message), SEND_TIMEOUT_S)

        await super().__call__(scope, receive, patient_send)


Svc = Annotated[Services, Depends(services)]


@router.post(
    "/v1/instances/{ref}/backup",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}, "description": "the archive"}},
    openapi_extra={"x-gureum-role": "member"},
)
async def export_backup(
    ref: str, svc: Svc, scope: Member, memory: bool = False
) -> StreamingResponse:
    """The instance as one archive (tar: config, flattened disk, boot files, optional memory,
    checksums), streamed as it is written. The VM keeps running (a snapshot is taken and
    read). A POST, and audited: it changes state (the snapshot) and hands out the whole disk."""
    filename, stream = await svc.backups.export(ref, memory=memory, project_id=scope.project_id)
    headers = {"content-disposition": f'attachment; filename="{filename}"'}
    return _ExportResponse(stream, media_type="application/x-tar", headers=headers)


@router.post(
    "/v1/backups/import",
    status_code=201,
    response_model=InstanceOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def import_backup(
    request: Request,
    svc: Svc,
    scope: Member,
    name: Annotated[str, Query(description="the new instance's name")],
) -> dict[str, object]:
    """Create a (stopped) instance from an archive in the request body. The archive is checked
    whole first: a truncated or altered one is refused and nothing is created. With memory, the
    new instance has a snapshot named ``backup`` that resumes it."""
    inst = await svc.backups.import_(request.stream(), name, scope.project_id)
    return svc.instances.view(inst)


@starts_operation(router, "/v1/backups/verify", "member")
async def verify_backup(request: Request, svc: Svc, scope: Member) -> JSONResponse:
    """The archive in the body is received and checked whole in the request (one that is not
    answers ``invalid-archive``); the operation then imports it as a throw-away VM, boots it,
    checks the guest answers and removes it. Its result: ``{ok, seconds, detail}``."""
    return accepted(await svc.backups.verify(request.stream(), scope.project_id))
