"""A project's SSH key pairs: public keys kept under a name for launches to name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gureum.api.auth import Member, Viewer
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import KeyPairIn, KeyPairOut
from gureum.service.core import Services

router = APIRouter(prefix="/v1/keypairs", tags=["keypairs"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=list[KeyPairOut], openapi_extra={"x-gureum-role": "viewer"})
async def list_keypairs(svc: Svc, scope: Viewer) -> list[dict[str, object]]:
    return [p.to_dict() for p in svc.keypairs.list(scope.project_id)]


@router.post(
    "", status_code=201, response_model=KeyPairOut, openapi_extra={"x-gureum-role": "member"}
)
async def add_keypair(body: KeyPairIn, svc: Svc, scope: Member) -> dict[str, object]:
    """A public key under a name (a private key, or anything that is not one key line, is
    refused without being echoed); at most 100 per project."""
    return svc.keypairs.add(body.name, body.public_key, scope.project_id).to_dict()


@router.delete("/{keypair}", response_model=KeyPairOut, openapi_extra={"x-gureum-role": "member"})
async def delete_keypair(keypair: str, svc: Svc, scope: Member) -> dict[str, object]:
    """VMs launched with it keep its key (it was copied into them)."""
    return svc.keypairs.delete(keypair, scope.project_id).to_dict()
