"""Operations: follow and wait on long work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from gureum.api.auth import Viewer
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import OperationOut
from gureum.service.core import Services

router = APIRouter(prefix="/v1/operations", tags=["operations"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=list[OperationOut], openapi_extra={"x-gureum-role": "viewer"})
async def list_operations(
    svc: Svc,
    scope: Viewer,
    target: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, object]]:
    """The project's operations; for the host's administrator, image builds and checks too
    (they belong to no project)."""
    ops = svc.ops.list(
        limit=limit,
        target=target,
        project_id=scope.project_id,
        unowned=scope.principal.superuser,
    )
    return [op.to_dict() for op in ops]


@router.get("/{operation}", response_model=OperationOut, openapi_extra={"x-gureum-role": "viewer"})
async def get_operation(
    operation: str,
    svc: Svc,
    scope: Viewer,
    wait_s: Annotated[float, Query(ge=0, le=60, description="long-poll up to this long")] = 0,
    progress_after: Annotated[
        int, Query(ge=0, description="return at once if there are more progress lines than this")
    ] = 0,
) -> dict[str, object]:
    """With ``wait_s``, answers as soon as the operation finishes or reports more progress than
    ``progress_after`` lines, or after ``wait_s`` seconds."""
    if wait_s > 0:
        op = await svc.ops.wait(
            operation, timeout=wait_s, progress_after=progress_after, project_id=scope.project_id
        )
    else:
        op = svc.ops.get(operation, scope.project_id)
    return op.to_dict(progress_after=progress_after)
