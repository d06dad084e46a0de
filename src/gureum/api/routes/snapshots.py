"""Snapshots, restore, clone and resize of one instance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gureum.api.accepted import accepted, name_what_is_made, starts_operation
from gureum.api.auth import Member, Viewer
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import CloneIn, LaunchOut, ResizeIn, SnapshotIn, SnapshotOut
from gureum.errors import InvalidInput
from gureum.service.core import Services
from gureum.units import GIB

router = APIRouter(prefix="/v1/instances/{ref}", tags=["snapshots"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.get(
    "/snapshots", response_model=list[SnapshotOut], openapi_extra={"x-gureum-role": "viewer"}
)
async def list_snapshots(ref: str, svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    return [svc.snapshots.view(s) for s in svc.snapshots.list(ref, scope.project_id)]


@starts_operation(router, "/snapshots", "member")
async def create_snapshot(
    ref: str, body: SnapshotIn, svc: Svc, scope: Member, request: Request
) -> JSONResponse:
    """Disk snapshot (quiesced through the guest agent when it answers), or with ``memory``
    disk and memory of a running VM."""
    name_what_is_made(request, body.name)
    op = await svc.snapshots.create(ref, body.name, memory=body.memory, project_id=scope.project_id)
    return accepted(op)


@starts_operation(router, "/snapshots/{snapshot}/restore", "member")
async def restore_snapshot(
    ref: str, snapshot: str, svc: Svc, scope: Member, restart: bool = False
) -> JSONResponse:
    """Back to the snapshot: the disk, and with a memory snapshot the running state. A running
    VM restored to a disk snapshot is restarted on it, so that takes ``restart=true`` (409
    ``invalid-state`` without). The disk keeps its current size."""
    op = await svc.snapshots.restore(ref, snapshot, scope.project_id, restart=restart)
    return accepted(op)


@router.delete(
    "/snapshots/{snapshot}", response_model=SnapshotOut, openapi_extra={"x-gureum-role": "member"}
)
async def delete_snapshot(ref: str, snapshot: str, svc: Svc, scope: Member) -> dict[str, object]:
    """Disk data another disk still builds on (a clone's) is kept; ``disk_data_kept_for``."""
    return await svc.snapshots.delete(ref, snapshot, scope.project_id)


@router.post(
    "/snapshots/{snapshot}/clone",
    status_code=202,
    response_model=LaunchOut,
    openapi_extra={"x-gureum-role": "member"},
)
async def clone_snapshot(
    ref: str, snapshot: str, body: CloneIn, svc: Svc, scope: Member
) -> JSONResponse:
    """A new VM from a snapshot: thin disk, new id, name, MAC, hostname and generation id."""
    inst, op = await svc.snapshots.clone(ref, snapshot, body.name, scope.project_id)
    return accepted(op, {"instance": svc.instances.view(inst), "operation": op.to_dict()})


@starts_operation(router, "/resize", "member")
async def resize(ref: str, body: ResizeIn, svc: Svc, scope: Member) -> JSONResponse:
    """Live where the guest allows, else at the next boot; the result says which."""
    disk = None
    if body.disk_gib is not None:
        if not 0 < body.disk_gib < 1e6:
            raise InvalidInput(f"disk must be a positive size, not {body.disk_gib} GiB")
        disk = int(body.disk_gib * GIB)
    op = await svc.resize.resize(
        ref,
        cpus=body.cpus,
        memory_mib=body.memory_mib,
        disk_bytes=disk,
        project_id=scope.project_id,
    )
    return accepted(op)
