"""Backup archives: export (a stream out), import and verify (a stream in)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import InstanceOut, VerifyBackupOut
from gureum.service.core import Services

router = APIRouter(tags=["backups"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.get(
    "/v1/instances/{ref}/backup",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}, "description": "the archive"}},
)
async def export_backup(ref: str, svc: Svc, memory: bool = False) -> StreamingResponse:
    """The instance as one archive (tar: config, flattened disk, boot files, optional memory,
    checksums), streamed as it is written. The VM keeps running (a snapshot is read)."""
    filename, stream = await svc.backups.export(ref, memory=memory)
    headers = {"content-disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(stream, media_type="application/x-tar", headers=headers)


@router.post("/v1/backups/import", status_code=201, response_model=InstanceOut)
async def import_backup(
    request: Request, svc: Svc, name: Annotated[str, Query(description="the new instance's name")]
) -> dict[str, object]:
    """Create a (stopped) instance from an archive in the request body. The archive is checked
    whole first: a truncated or altered one is refused and nothing is created. With memory, the
    new instance has a snapshot named ``backup`` that resumes it."""
    inst = await svc.backups.import_(request.stream(), name)
    return svc.instances.view(inst)


@router.post("/v1/backups/verify", response_model=VerifyBackupOut)
async def verify_backup(request: Request, svc: Svc) -> dict[str, object]:
    """Import the archive as a throw-away VM, boot it, check the guest answers, remove it."""
    return await svc.backups.verify(request.stream())
