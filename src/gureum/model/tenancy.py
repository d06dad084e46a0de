"""Projects, users, roles, API tokens and the audit trail: the pure data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"  # reads
    MEMBER = "member"  # acts: launch, stop, snapshot...
    ADMIN = "admin"  # manages the project's members and quotas

    @property
    def rank(self) -> int:
        return {"viewer": 1, "member": 2, "admin": 3}[self.value]


QUOTA_FIELDS = (
    "max_instances",
    "max_cpus",
    "max_memory_mib",
    "max_disk_bytes",
    "max_snapshots",
    "max_networks",
    "max_forwards",
)


@dataclass
class Project:
    id: str
    name: str
    created_at: float
    # Allocation limits (None: unlimited).
    max_instances: int | None = None
    max_cpus: int | None = None
    max_memory_mib: int | None = None
    max_disk_bytes: int | None = None
    max_snapshots: int | None = None
    max_networks: int | None = None
    max_forwards: int | None = None  # port forwards, all the project's instances together
    # Real use: the project's control group (None: CPU follows max_cpus, memory unbounded).
    cpu_limit: float | None = None  # cores
    memory_limit_mib: int | None = None

    def quotas(self) -> dict[str, int | None]:
        return {f: getattr(self, f) for f in QUOTA_FIELDS}


@dataclass(frozen=True)
class User:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class Token:
    id: str
    user_id: str
    name: str
    secret_hash: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None
    expires_at: float | None = None  # None: until revoked


@dataclass(frozen=True)
class Principal:
    """Who is calling. The root user on the local socket is the bootstrap superuser."""

    name: str
    user_id: str | None  # None: the superuser
    token_id: str | None = None

    @property
    def superuser(self) -> bool:
        return self.user_id is None


@dataclass(frozen=True)
class Scope:
    """A caller acting in one project, with a role there."""

    principal: Principal
    project: Project
    role: Role

    @property
    def project_id(self) -> str:
        return self.project.id
