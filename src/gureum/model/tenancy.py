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


class Amount(StrEnum):
    """What a quota's number is, so every layer reads and shows it the same way."""

    COUNT = "count"
    MIB = "mib"  # the CLI takes 8G and sends MiB
    BYTES = "bytes"  # the CLI takes 100G and sends bytes
    CORES = "cores"  # a fraction of CPUs: 0.5


@dataclass(frozen=True)
class Quota:
    """One of a project's limits. This table is the one place they are declared: the API's
    request bodies, the CLI's options, the store's columns and the quota check are made from
    it (``Project`` holds them as fields, and a test keeps it in step)."""

    field: str
    amount: Amount
    help: str
    counts: str | None = None  # what an allocation asks of it (cpus=2); None: a cgroup limit
    label: str = ""  # how a refusal names it

    @property
    def unit(self) -> int:
        """The unit a refusal shows it in (GiB for disk bytes)."""
        return 1 << 30 if self.amount == Amount.BYTES else 1


# Allocation limits: what a project's instances, snapshots, networks... may hold together.
QUOTAS = (
    Quota("max_instances", Amount.COUNT, "Instances at most.", "instances", "instances"),
    Quota("max_cpus", Amount.COUNT, "vCPUs at most, all instances together.", "cpus", "vCPUs"),
    Quota("max_memory_mib", Amount.MIB, "Guest memory at most, e.g. 8G.", "memory_mib",
          "MiB of memory"),
    Quota("max_disk_bytes", Amount.BYTES, "Disk at most, e.g. 100G.", "disk_bytes",
          "GiB of disk"),
    Quota("max_snapshots", Amount.COUNT, "Snapshots at most.", "snapshots", "snapshots"),
    Quota("max_networks", Amount.COUNT, "Networks at most.", "networks", "networks"),
    Quota("max_forwards", Amount.COUNT, "Port forwards at most, all instances together.",
          "forwards", "port forwards"),
)  # fmt: skip
# Real use: the project's control group (None: CPU follows max_cpus, memory unbounded).
LIMITS = (
    Quota("cpu_limit", Amount.CORES,
          "Cores its VMs may really use (control group; default: max-cpus)."),
    Quota("memory_limit_mib", Amount.MIB, "Memory its VMs may really use, e.g. 4G."),
)  # fmt: skip
QUOTA_FIELDS = tuple(q.field for q in QUOTAS)


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
    former_user: str | None = None  # its user's name, once that user is deleted
    # An AWS access key (the EC2 API, SigV4): its id, the project it acts in, and its secret
    # sealed with the service's key (SigV4 needs the secret itself, so a hash would not do;
    # the database alone does not give it). None for a gureum token.
    access_key_id: str | None = None
    project_id: str | None = None
    secret_sealed: str | None = None


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
