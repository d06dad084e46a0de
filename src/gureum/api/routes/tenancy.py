"""Projects, users, members, tokens, usage and the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, create_model

from gureum.api.auth import PROJECT_HEADER, AnyUser, ProjectAdmin, ProjectViewer, Super, enter
from gureum.api.deps import services
from gureum.api.errors import COMMON_RESPONSES
from gureum.api.schemas import Strict
from gureum.errors import InvalidInput
from gureum.model.instance import DEFAULT_PROJECT
from gureum.model.tenancy import LIMITS, QUOTAS, Amount, Role, Scope
from gureum.service.core import Services
from gureum.service.networks import DEFAULT_GROUP, DEFAULT_NETWORK

router = APIRouter(tags=["tenancy"], responses=COMMON_RESPONSES)
Svc = Annotated[Services, Depends(services)]


def _quota_fields() -> dict[str, Any]:
    """One optional field a quota, from the model's table (``model/tenancy.py``)."""
    return {
        q.field: (float | None if q.amount == Amount.CORES else int | None,
                  Field(None, description=q.help))
        for q in QUOTAS + LIMITS
    }  # fmt: skip


# Request bodies made from the quota table: a quota added there is taken here too. (The type
# checker cannot see a model made at run time: to it they are the Strict models they extend.)
if TYPE_CHECKING:
    ProjectIn = Strict
    QuotasIn = Strict
else:
    ProjectIn = create_model("ProjectIn", __base__=Strict, name=(str, ...), **_quota_fields())
    QuotasIn = create_model("QuotasIn", __base__=Strict, **_quota_fields())


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: float
    quotas: dict[str, Any]
    cpu_limit: float | None
    memory_limit_mib: int | None
    role: str | None = None


class NameIn(Strict):
    name: str


class UserOut(BaseModel):
    id: str
    name: str
    created_at: float


class MemberIn(Strict):
    role: str = Field(description="admin, member or viewer")


class MemberOut(BaseModel):
    user: str
    role: str


class TokenIn(Strict):
    name: str
    user: str | None = Field(
        None, description="whose token (the administrator only); default: yours"
    )
    expires_in_s: int | None = Field(
        None, description="seconds until it stops working (up to 10 years); default: never"
    )
    aws: bool = Field(
        False,
        description="an AWS access key for the EC2 API instead (SigV4), acting in one project",
    )
    project: str | None = Field(
        None, description="the project an AWS access key acts in; default: default"
    )


class TokenOut(BaseModel):
    id: str
    user: str
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    expires_at: float | None = Field(None, description="when it stops working; null: never")
    token: str | None = Field(None, description="the secret: shown once, at creation")
    access_key_id: str | None = Field(None, description="an AWS access key's id (EC2 API)")
    secret_access_key: str | None = Field(
        None, description="an AWS access key's secret: shown once, at creation"
    )
    project: str | None = Field(None, description="the project an AWS access key acts in")


class MembershipOut(BaseModel):
    project: str
    role: str


class WhoAmIOut(BaseModel):
    user: str
    superuser: bool = Field(description="root on the local socket, no token")
    token_id: str | None
    token_name: str | None
    projects: list[MembershipOut] = Field(description="where the caller has a role")


class AuditOut(BaseModel):
    id: str
    at: float
    user: str
    project: str | None
    action: str
    target: str | None
    result: int
    detail: dict[str, Any] | None


def _project_view(project: Any, role: str | None = None) -> dict[str, object]:
    return {
        "id": project.id,
        "name": project.name,
        "created_at": project.created_at,
        "quotas": project.quotas(),
        "cpu_limit": project.cpu_limit,
        "memory_limit_mib": project.memory_limit_mib,
        "role": role,
    }


def _token_views(
    svc: Services, tokens: list[Any], secret: str | None = None
) -> list[dict[str, object]]:
    """Tokens as shown, their users' and projects' names read once for all of them."""
    users = {u.id: u.name for u in svc.tenancy.users()}
    projects = svc.tenancy.project_names()
    return [
        _token_view(t, users.get(t.user_id) or t.former_user or t.user_id, projects, secret)
        for t in tokens
    ]


def _token_view(
    token: Any, user: str, projects: dict[str, str], secret: str | None
) -> dict[str, object]:
    aws = token.access_key_id is not None
    return {
        "id": token.id,
        "user": user,
        "name": token.name,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
        "expires_at": token.expires_at,
        "token": None if aws else secret,
        "access_key_id": token.access_key_id,
        "secret_access_key": secret if aws else None,
        "project": projects.get(token.project_id, token.project_id) if aws else None,
    }


def _members(svc: Services, scope: Scope) -> list[dict[str, str]]:
    return [{"user": u, "role": r} for u, r in svc.tenancy.members(scope.project.id)]


# -- projects ------------------------------------------------------------------------------------
@router.post(
    "/v1/projects",
    status_code=201,
    response_model=ProjectOut,
    openapi_extra={"x-gureum-role": "superuser"},
)
async def create_project(body: ProjectIn, svc: Svc, _: Super) -> dict[str, object]:
    quotas = body.model_dump()
    project = svc.tenancy.create_project(quotas.pop("name"), quotas)
    await svc.quotas.apply_limits(project)
    return _project_view(project)


@router.get("/v1/whoami", response_model=WhoAmIOut, openapi_extra={"x-gureum-role": "user"})
async def whoami(svc: Svc, who: AnyUser) -> dict[str, object]:
    """Who the caller is: user, token, and their role in each project."""
    token = svc.tenancy.token(who.token_id) if who.token_id else None
    projects = [{"project": p.name, "role": r.value} for p, r in svc.tenancy.projects(who)]
    return {
        "user": who.name,
        "superuser": who.superuser,
        "token_id": who.token_id,
        "token_name": token.name if token else None,
        "projects": sorted(projects, key=lambda m: m["project"]),
    }


@router.get(
    "/v1/projects", response_model=list[ProjectOut], openapi_extra={"x-gureum-role": "user"}
)
async def list_projects(svc: Svc, who: AnyUser) -> list[dict[str, object]]:
    return [_project_view(p, role.value) for p, role in svc.tenancy.projects(who)]


@router.get(
    "/v1/projects/{project}", response_model=ProjectOut, openapi_extra={"x-gureum-role": "viewer"}
)
async def get_project(project: str, svc: Svc, scope: ProjectViewer) -> dict[str, object]:
    return _project_view(scope.project, scope.role.value)


@router.patch(
    "/v1/projects/{project}/quotas",
    response_model=ProjectOut,
    openapi_extra={"x-gureum-role": "admin"},
)
async def set_quotas(
    project: str, body: QuotasIn, svc: Svc, scope: ProjectAdmin
) -> dict[str, object]:
    """Project admins set their project's quotas (unset fields stay as they are)."""
    quotas = body.model_dump(exclude_unset=True)
    updated = svc.tenancy.set_quotas(scope, quotas, svc.quotas.host_cpus())
    await svc.quotas.apply_limits(updated)
    return _project_view(updated, scope.role.value)


@router.delete(
    "/v1/projects/{project}",
    response_model=ProjectOut,
    openapi_extra={"x-gureum-role": "superuser"},
)
async def delete_project(project: str, svc: Svc, _: Super) -> dict[str, object]:
    """Refused while the project holds anything its users made (named in the refusal); its
    default network and security group, which gureum made by itself, go with it."""
    target = svc.quotas.project(project)
    nets = svc.networks.list(target.id)
    groups = svc.secgroups.list(target.id)
    in_use = [f"instance {i.name}" for i in svc.instances.list(target.id)]
    in_use += [f"network {n.name}" for n in nets if n.name != DEFAULT_NETWORK]
    in_use += [f"security group {g.name}" for g in groups if g.name != DEFAULT_GROUP]
    in_use += [f"image {i.name}" for i in svc.images.list((target.id,)) if i.project_id]
    svc.tenancy.deletable(project, in_use)
    for net in nets:
        await svc.networks.delete(net.id, target.id)
    for group in groups:
        await svc.secgroups.delete(group.id, target.id)
    deleted = svc.tenancy.delete_project(project, [])
    svc.quotas.forget_limits(deleted.id)
    return _project_view(deleted)


@router.get("/v1/projects/{project}/usage", openapi_extra={"x-gureum-role": "viewer"})
async def project_usage(project: str, svc: Svc, scope: ProjectViewer) -> dict[str, object]:
    """Allocated (what quotas count) next to really used: CPU time, resident memory, disk."""
    return svc.quotas.usage(scope.project)


@router.get(
    "/v1/projects/{project}/members",
    response_model=list[MemberOut],
    openapi_extra={"x-gureum-role": "viewer"},
)
async def list_members(project: str, svc: Svc, scope: ProjectViewer) -> list[dict[str, str]]:
    return _members(svc, scope)


@router.put(
    "/v1/projects/{project}/members/{user}",
    response_model=list[MemberOut],
    openapi_extra={"x-gureum-role": "admin"},
)
async def set_member(
    project: str, user: str, body: MemberIn, svc: Svc, scope: ProjectAdmin
) -> list[dict[str, str]]:
    svc.tenancy.set_member(scope, user, body.role)
    return _members(svc, scope)


@router.delete(
    "/v1/projects/{project}/members/{user}",
    response_model=list[MemberOut],
    openapi_extra={"x-gureum-role": "admin"},
)
async def remove_member(
    project: str, user: str, svc: Svc, scope: ProjectAdmin
) -> list[dict[str, str]]:
    svc.tenancy.remove_member(scope, user)
    return _members(svc, scope)


# -- users ---------------------------------------------------------------------------------------
@router.post(
    "/v1/users",
    status_code=201,
    response_model=UserOut,
    openapi_extra={"x-gureum-role": "superuser"},
)
async def create_user(body: NameIn, svc: Svc, _: Super) -> dict[str, object]:
    return svc.tenancy.create_user(body.name).__dict__


@router.get("/v1/users", response_model=list[UserOut], openapi_extra={"x-gureum-role": "superuser"})
async def list_users(svc: Svc, _: Super) -> list[dict[str, object]]:
    return [u.__dict__ for u in svc.tenancy.users()]


@router.delete(
    "/v1/users/{user}", response_model=UserOut, openapi_extra={"x-gureum-role": "superuser"}
)
async def delete_user(user: str, svc: Svc, _: Super) -> dict[str, object]:
    """Also revokes all the user's tokens, at once."""
    return svc.tenancy.delete_user(user).__dict__


# -- tokens --------------------------------------------------------------------------------------
@router.post(
    "/v1/tokens", status_code=201, response_model=TokenOut, openapi_extra={"x-gureum-role": "user"}
)
async def create_token(body: TokenIn, svc: Svc, who: AnyUser) -> dict[str, object]:
    """The secret is in ``token``, this once; only its hash is kept."""
    project = (body.project or DEFAULT_PROJECT) if body.aws else None
    if body.project and not body.aws:
        raise InvalidInput("a project is for an AWS access key (aws: true); tokens act anywhere")
    token, secret = svc.tenancy.create_token(
        who, body.user, body.name, body.expires_in_s, aws_project=project
    )
    return _token_views(svc, [token], secret)[0]


@router.get("/v1/tokens", response_model=list[TokenOut], openapi_extra={"x-gureum-role": "user"})
async def list_tokens(svc: Svc, who: AnyUser) -> list[dict[str, object]]:
    return _token_views(svc, svc.tenancy.tokens(who))


@router.delete(
    "/v1/tokens/{token}", response_model=TokenOut, openapi_extra={"x-gureum-role": "user"}
)
async def revoke_token(token: str, svc: Svc, who: AnyUser) -> dict[str, object]:
    """Revoked at once: the next request with it is refused."""
    return _token_views(svc, [svc.tenancy.revoke(who, token)])[0]


# -- audit ---------------------------------------------------------------------------------------
@router.get("/v1/audit", response_model=list[AuditOut], openapi_extra={"x-gureum-role": "admin"})
async def list_audit(
    request: Request,
    svc: Svc,
    who: AnyUser,
    project: str | None = None,
    user: str | None = None,
    action: str | None = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Every state-changing call: who, project, action, target, result (HTTP status), when.
    Project admins see their project's; the administrator sees all."""
    if not who.superuser:
        ref = project or request.headers.get(PROJECT_HEADER)
        project = enter(request, who, ref, Role.ADMIN).project.name
    return svc.tenancy.audit(project=project, user=user, action=action, since=since, limit=limit)
