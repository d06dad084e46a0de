"""Images: build from Debian packages, list, verify, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from gureum.api.auth import AnyUser, Super
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import ImageOut, OperationOut, VerifyOut
from gureum.service.core import Services

router = APIRouter(prefix="/v1/images", tags=["images"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=list[ImageOut], openapi_extra={"x-gureum-role": "user"})
async def list_images(svc: Svc, _: AnyUser) -> list[dict[str, object]]:
    return [i.to_dict() for i in svc.images.list()]


@router.get("/{name}", response_model=ImageOut, openapi_extra={"x-gureum-role": "user"})
async def get_image(name: str, svc: Svc, _: AnyUser) -> dict[str, object]:
    return svc.images.get(name).to_dict()


@router.post(
    "/{name}/build",
    status_code=202,
    response_model=OperationOut,
    openapi_extra={"x-gureum-role": "superuser"},
)
async def build_image(name: str, svc: Svc, _: Super) -> JSONResponse:
    """Build (or confirm up to date) an image from its recipe; returns the operation."""
    op = svc.images.build(name)
    return JSONResponse(op.to_dict(), status_code=202)


@router.post(
    "/{name}/verify", response_model=VerifyOut, openapi_extra={"x-gureum-role": "superuser"}
)
async def verify_image(name: str, svc: Svc, _: Super) -> dict[str, object]:
    """Recompute every file's checksum against the catalog."""
    problems = await svc.images.verify(name)
    return {"name": name, "ok": not problems, "problems": problems}


@router.delete("/{name}", response_model=ImageOut, openapi_extra={"x-gureum-role": "superuser"})
async def delete_image(name: str, svc: Svc, _: Super) -> dict[str, object]:
    return svc.images.delete(name).to_dict()
