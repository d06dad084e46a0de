"""The host and the service itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gureum import __version__
from gureum.api.auth import AnyUser, Super
from gureum.api.deps import services
from gureum.api.schemas import (
    EnrolIn,
    EnrolOut,
    HostCheckOut,
    HostEntryOut,
    HostOut,
    PoolIn,
    PoolOut,
    VersionOut,
)
from gureum.model.instance import committed
from gureum.service.core import Services
from gureum.service.placement import CORDONED, READY

router = APIRouter(prefix="/v1", tags=["system"])


@router.get("/version", response_model=VersionOut, openapi_extra={"x-gureum-role": "user"})
async def version(_: AnyUser) -> dict[str, str]:
    return {"version": __version__, "api": "v1"}


@router.get("/host", response_model=HostOut, openapi_extra={"x-gureum-role": "user"})
async def host(svc: Annotated[Services, Depends(services)], who: AnyUser) -> dict[str, object]:
    """Accelerator in use, capacity, and what is committed to VMs (admission control). The
    whole host for the administrator; for a user, what their own projects commit only."""
    summary = svc.instances.host_summary()
    if who.superuser:
        return {**summary, "view": "host"}
    # Other tenants' totals and the host's size are not a user's business (they would show
    # who else runs what, and when).
    mine = [
        inst for project, _ in svc.tenancy.projects(who) for inst in svc.instances.list(project.id)
    ]
    cpus, memory_mib = committed(mine)
    return {
        **summary,
        "capacity": {},
        "committed": {"cpus": cpus, "memory_mib": memory_mib},
        "instances": len(mine),
        "view": "projects",
    }


@router.get(
    "/hosts", response_model=list[HostEntryOut], openapi_extra={"x-gureum-role": "superuser"}
)
async def hosts(svc: Annotated[Services, Depends(services)], _: Super) -> list[dict[str, object]]:
    """The hosts instances are placed on, their state, capacity and what is committed."""
    return svc.hosts.list()


@router.post(
    "/hosts", status_code=201, response_model=EnrolOut,
    openapi_extra={"x-gureum-role": "superuser"},
)  # fmt: skip
async def enrol(
    body: EnrolIn, svc: Annotated[Services, Depends(services)], _: Super
) -> dict[str, object]:
    """A join token for a new host's agent (`gureum agent --join TOKEN` on that host): used
    once, within an hour. Needs the control plane's cluster port (``cluster_listen``)."""
    token, expires_at = svc.enrolment.enrol(body.name, body.address)
    return {"host": body.name, "token": token, "expires_at": expires_at}


@router.post(
    "/hosts/{host}/cordon", response_model=HostEntryOut,
    openapi_extra={"x-gureum-role": "superuser"},
)  # fmt: skip
async def cordon(
    host: str, svc: Annotated[Services, Depends(services)], _: Super
) -> dict[str, object]:
    """No new instance is placed on the host; those on it carry on (start, stop, resize)."""
    return svc.hosts.set_state(host, CORDONED)


@router.post(
    "/hosts/{host}/uncordon", response_model=HostEntryOut,
    openapi_extra={"x-gureum-role": "superuser"},
)  # fmt: skip
async def uncordon(
    host: str, svc: Annotated[Services, Depends(services)], _: Super
) -> dict[str, object]:
    """New instances may be placed on the host again."""
    return svc.hosts.set_state(host, READY)


@router.post(
    "/hosts/{host}/check", response_model=HostCheckOut,
    openapi_extra={"x-gureum-role": "superuser"},
)  # fmt: skip
async def check_host(
    host: str, svc: Annotated[Services, Depends(services)], _: Super
) -> dict[str, object]:
    """Ask a joined host's agent on its command port, as the control plane drives it: what it
    answers and the round trip; **503** where it cannot be reached, **502** (``untrusted``)
    where what answers is not that host's agent."""
    return await svc.agents.check(host)


@router.get("/host/pool", response_model=PoolOut, openapi_extra={"x-gureum-role": "superuser"})
async def pool(svc: Annotated[Services, Depends(services)], _: Super) -> dict[str, object]:
    """The pool of QEMUs started ahead of launches from templates, and how full it is."""
    return svc.templates.pool.view()


@router.put("/host/pool", response_model=PoolOut, openapi_extra={"x-gureum-role": "superuser"})
async def resize_pool(
    body: PoolIn, svc: Annotated[Services, Depends(services)], _: Super
) -> dict[str, object]:
    """Keep ``size`` QEMUs waiting for each template of an image's current version; the pool
    grows (within the host's capacity) or shrinks to it in the background."""
    return svc.templates.pool.resize(body.size)
