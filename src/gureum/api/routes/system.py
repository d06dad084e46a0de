"""The host and the service itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gureum import __version__
from gureum.api.auth import AnyUser
from gureum.api.deps import services
from gureum.api.schemas import HostOut, VersionOut
from gureum.service.core import Services

router = APIRouter(prefix="/v1", tags=["system"])


@router.get("/version", response_model=VersionOut, openapi_extra={"x-gureum-role": "user"})
async def version(_: AnyUser) -> dict[str, str]:
    return {"version": __version__, "api": "v1"}


@router.get("/host", response_model=HostOut, openapi_extra={"x-gureum-role": "user"})
async def host(svc: Annotated[Services, Depends(services)], _: AnyUser) -> dict[str, object]:
    """Accelerator in use, capacity, and what is committed to VMs (admission control)."""
    return svc.instances.host_summary()
