"""Who may do what: authentication, projects, users, roles, tokens, and the audit trail.

Identity: a bearer token (any transport) is its user; with no token, only the local unix socket
(root-only) is accepted, as the bootstrap superuser. Tokens are random secrets shown once; the
store keeps only their SHA-256, so a leaked database grants nothing. A revoked token fails on
its very next request (no cache).

Projects: a user acts in one project at a time (``--project`` / ``X-Gureum-Project``). In a
project where they have no role, nothing exists for them: every lookup answers "not found",
exactly as for a missing resource. Viewers read, members act, admins also manage members and
quotas. Only the superuser creates projects and users.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from typing import Any

from gureum.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
    found,
)
from gureum.ids import check_name, looks_like_id, new_id
from gureum.model.instance import DEFAULT_PROJECT
from gureum.model.limits import MAX_QUOTA_US, MIN_CPU_CORES, MIN_QUOTA_US, PERIOD_US, cpu_quota_us
from gureum.model.tenancy import (
    LIMITS,
    QUOTAS,
    Principal,
    Project,
    Role,
    Scope,
    Token,
    User,
)
from gureum.service.events import EventBus
from gureum.service.keyring import ServiceKey
from gureum.store.tenancy import TenancyStore
from gureum.units import MIB

log = logging.getLogger(__name__)

SUPERUSER = Principal(name="root", user_id=None)
ANONYMOUS = "anonymous"  # who the audit says called without a valid identity
# Names the service itself writes as a caller in lists and the audit: a user by one of these
# names would pass for the host's administrator or for an unauthenticated caller.
RESERVED_USER_NAMES = frozenset({SUPERUSER.name, ANONYMOUS})
BIGINT_MAX = (1 << 63) - 1
TOKEN_PREFIX = "gur_"
ACCESS_KEY_PREFIX = "GKIA"  # then 16 hex digits, upper case: 20 characters, as AWS's AKIA...
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400
TOUCH_EVERY_S = 60.0


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TenancyService:
    def __init__(
        self,
        store: TenancyStore,
        *,
        max_tokens_per_user: int = 50,
        events: EventBus | None = None,
        keyring: ServiceKey | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring  # seals AWS secret keys (service/keyring.py)
        self.events = events or EventBus()
        self.max_tokens_per_user = max_tokens_per_user  # 0: no bound
        self._touched: dict[str, float] = {}  # token id -> when its last_used_at was written

    # -- authentication --------------------------------------------------------------------------
    def authenticate(self, secret: str) -> Principal:
        known = secret.startswith(TOKEN_PREFIX)
        found = self.store.token_holder(hash_secret(secret)) if known else None
        if found is None or found[0].revoked_at is not None or found[0].access_key_id:
            # (An AWS secret key signs requests; it is never a bearer token.)
            raise Unauthenticated("invalid or revoked token")
        token, user = found
        if token.expires_at is not None and time.time() >= token.expires_at:
            raise Unauthenticated("the token has expired; create a new one")
        if user is None:
            raise Unauthenticated("the token's user no longer exists")
        self._touch(token.id)
        return Principal(name=user.name, user_id=user.id, token_id=token.id)

    def _touch(self, token_id: str) -> None:
        """ "Last used" to the minute: a write per request would serialise every reader."""
        now = time.monotonic()
        if now - self._touched.get(token_id, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self.store.touch(token_id)
            self._touched[token_id] = now

    def scope(self, principal: Principal, project_ref: str | None) -> Scope:
        """The project a request acts in, and the caller's role there."""
        if principal.superuser:
            project = self._project(project_ref or DEFAULT_PROJECT)
            return Scope(principal, project, Role.ADMIN)
        assert principal.user_id is not None
        if project_ref is None:
            mine = self.store.memberships_of(principal.user_id)
            if not mine:  # not a bad request: no role anywhere, until someone gives one
                raise Forbidden(
                    f"user {principal.name} is not a member of any project: a project's admin "
                    f"(or the administrator) gives them a role with `gureum project member add "
                    f"PROJECT {principal.name}`"
                )
            if len(mine) > 1:
                raise InvalidInput("say which project to act in (--project NAME or GUREUM_PROJECT)")
            project_ref = mine[0][0]
        found = self.store.project_role(project_ref, principal.user_id)
        if found is None or found[1] is None:
            raise NotFound(f"no project named {project_ref!r}")  # the same as a missing one
        return Scope(principal, found[0], found[1])

    @staticmethod
    def require(scope: Scope, role: Role) -> None:
        if scope.role.rank < role.rank:
            raise Forbidden(
                f"{scope.principal.name} is a {scope.role.value} in {scope.project.name}; "
                f"this needs {role.value}"
            )

    @staticmethod
    def require_superuser(principal: Principal) -> None:
        if not principal.superuser:
            raise Forbidden("only the administrator on the service's host may do this")

    # -- projects --------------------------------------------------------------------------------
    def _project(self, ref: str) -> Project:
        return found(self.store.project(ref), f"project named {ref!r}")

    def ensure_default(self) -> None:
        if self.store.project(DEFAULT_PROJECT) is None:
            self.store.add_project(Project(DEFAULT_PROJECT, "default", time.time()))

    def projects(self, principal: Principal) -> list[tuple[Project, Role]]:
        """The projects the caller has a role in, with that role (the administrator: all, as
        admin)."""
        if principal.superuser:
            return [(p, Role.ADMIN) for p in self.store.projects()]
        roles = dict(self.store.memberships_of(principal.user_id or ""))
        return [(p, Role(roles[p.id])) for p in self.store.projects() if p.id in roles]

    def project_ids(self, principal: Principal) -> set[str] | None:
        """The ids of the projects whose resources the caller sees (None: every project's, the
        administrator)."""
        if principal.superuser:
            return None
        return {p.id for p, _ in self.projects(principal)}

    def create_project(self, name: str, quotas: dict[str, float | int | None]) -> Project:
        check_name(name, what="project name")
        if looks_like_id(name, "p-"):
            # Projects are found by id or name: this one would shadow the project with that id.
            raise InvalidInput(f"a project name may not look like a project id ({name!r})")
        # _checked_quotas has checked each field's type against the Project's.
        project = Project(new_id("p-"), name, time.time(), **_checked_quotas(quotas))  # type: ignore[arg-type]
        self.store.add_project(project)
        return project

    def set_quotas(
        self, scope: Scope, quotas: dict[str, float | int | None], host_cpus: int
    ) -> Project:
        """The host's administrator grants; a project's admins may tighten what was granted
        (lower a quota or limit), never loosen it: that would take from the other tenants.
        ``host_cpus``: the ceiling of a CPU limit that neither cpu_limit nor max_cpus sets."""
        self.require(scope, Role.ADMIN)
        checked = _checked_quotas(quotas)
        if not scope.principal.superuser:
            for key, value in checked.items():
                if value is None and getattr(scope.project, key) is None:
                    continue  # unset stays unset
                granted = _granted(scope.project, key, host_cpus)
                if granted is not None and (value is None or value > granted):
                    raise Forbidden(
                        f"{key} can only be lowered (granted: {granted}); raising it is for the "
                        "host's administrator"
                    )
        self.store.update_project(scope.project.id, **checked)
        return self._project(scope.project.id)

    def deletable(self, ref: str, in_use: list[str]) -> Project:
        """The project, if it may be deleted: not the default one, and ``in_use`` (what the
        caller found still in it, named: "instance web") empty; the refusal names them."""
        project = self._project(ref)
        if project.id == DEFAULT_PROJECT:
            raise Conflict("the default project cannot be deleted")
        if in_use:
            shown = ", ".join(in_use[:10]) + (
                f" and {len(in_use) - 10} more" if len(in_use) > 10 else ""
            )
            raise Conflict(f"project {project.name} still has {shown}; delete them first")
        return project

    def delete_project(self, ref: str, in_use: list[str]) -> Project:
        project = self.deletable(ref, in_use)
        self.store.remove_project(project.id)
        return project

    # -- users and members -----------------------------------------------------------------------
    def create_user(self, name: str) -> User:
        check_name(name, what="user name")
        if name in RESERVED_USER_NAMES:
            raise InvalidInput(f"the user name {name!r} is reserved for the service's own use")
        if looks_like_id(name, "u-"):
            # Users are found by id or name: this one would shadow the user with that id.
            raise InvalidInput(f"a user name may not look like a user id ({name!r})")
        user = User(new_id("u-"), name, time.time())
        self.store.add_user(user)
        return user

    def user(self, ref: str) -> User:
        return found(self.store.user(ref), f"user named {ref!r}")

    def delete_user(self, ref: str) -> User:
        user = self.user(ref)
        self.store.remove_user(user.id)  # its tokens are revoked with it
        return user

    def visible_user(self, principal: Principal, ref: str) -> User:
        """A user the caller may know exists: the administrator knows everyone, a user the
        people they share a project with (whom they see in its members anyway). Anyone else
        answers exactly as a missing user does, so that no one learns names by trying them."""
        user = self.store.user(ref)
        if user is not None and not principal.superuser:
            mine = principal.user_id or ""
            if user.id != mine and not self.store.share_a_project(mine, user.id):
                user = None
        if user is None:
            raise NotFound(f"no user named {ref!r}")
        return user

    def set_member(self, scope: Scope, user_ref: str, role: str) -> None:
        self.require(scope, Role.ADMIN)
        try:
            parsed = Role(role)
        except ValueError as exc:
            raise InvalidInput(f"role must be admin, member or viewer, not {role!r}") from exc
        user = self.visible_user(scope.principal, user_ref)
        self.store.set_role(scope.project.id, user.id, parsed)

    def remove_member(self, scope: Scope, user_ref: str) -> None:
        self.require(scope, Role.ADMIN)
        user = self.store.user(user_ref)
        # A user who is not a member answers as one who does not exist (no name is confirmed).
        if user is None or not self.store.remove_member(scope.project.id, user.id):
            raise NotFound(f"no user named {user_ref!r} in {scope.project.name}")

    # -- tokens ----------------------------------------------------------------------------------
    def create_token(
        self,
        principal: Principal,
        user_ref: str | None,
        name: str,
        expires_in_s: int | None = None,
        aws_project: str | None = None,
    ) -> tuple[Token, str]:
        """A new token; the secret is returned here and never again. ``expires_in_s``: it stops
        working that many seconds from now (None: until revoked, or, made with a token that
        expires, when that one does: a token never outlives the token that made it).
        ``aws_project``: an AWS access key acting in that project (the EC2 API) instead, whose
        secret is the secret access key."""
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_TOKEN_LIFETIME_S:
            raise InvalidInput(
                f"a token's lifetime is 1 s to {MAX_TOKEN_LIFETIME_S // 86400} days, "
                f"not {expires_in_s} s"
            )
        user = self.user(user_ref) if user_ref else None
        if user is None:
            if principal.superuser:
                raise InvalidInput("say whose token this is (--user NAME)")
            user = self.user(principal.user_id or "")
        if not principal.superuser and user.id != principal.user_id:
            raise Forbidden("a user may only create tokens for themself")
        check_name(name, what="token name")
        now = time.time()
        expires = now + expires_in_s if expires_in_s is not None else None
        parent = self.store.token(principal.token_id) if principal.token_id else None
        if parent is not None and parent.expires_at is not None:
            # Else a short-lived token (a CI job's, a laptop's for the day) would be a way to
            # a lasting one, and its expiry would bound nothing.
            if expires is None:
                expires = parent.expires_at
            elif expires > parent.expires_at:
                left = max(0, int(parent.expires_at - now))
                raise InvalidInput(
                    f"a token cannot outlive the token that creates it, which expires in {left} "
                    f"s: ask for {left} s or less, or leave the lifetime out to end with it"
                )
        # No await from this count to the insert: concurrent requests cannot both pass it.
        cap = self.max_tokens_per_user
        if cap and self.store.live_tokens(user.id, now) >= cap:
            raise QuotaExceeded(
                f"user {user.name} already holds {cap} tokens that work (max_tokens_per_user); "
                "revoke one first (gureum token revoke ID)"
            )
        if aws_project is None:
            secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
            token = Token(new_id("t-"), user.id, name, hash_secret(secret), now, expires_at=expires)
        else:
            # An AWS access key acts in one project, where its user must have a role.
            member = Principal(name=user.name, user_id=user.id)
            project = self.scope(member, aws_project).project
            if self.keyring is None:
                raise InvalidInput("this service has no key to seal AWS secrets with")
            secret = secrets.token_urlsafe(30)  # 40 characters, as AWS's
            token = Token(
                new_id("t-"), user.id, name, hash_secret(secret), now, expires_at=expires,
                access_key_id=ACCESS_KEY_PREFIX + secrets.token_hex(8).upper(),
                project_id=project.id, secret_sealed=self.keyring.seal(secret),
            )  # fmt: skip
        self.store.add_token(token)
        return token, secret

    def authenticate_access_key(self, access_key_id: str) -> tuple[Principal, str, str]:
        """(who, the secret key, the project) of an AWS access key that works now; the same
        rules as a token (revoked, expired, its user deleted: refused)."""
        found = self.store.access_key_holder(access_key_id)
        if found is None or found[0].revoked_at is not None or found[0].secret_sealed is None:
            raise Unauthenticated("invalid or revoked access key")
        token, user = found
        if token.expires_at is not None and time.time() >= token.expires_at:
            raise Unauthenticated("the access key has expired")
        if user is None or self.keyring is None or token.project_id is None:
            raise Unauthenticated("the access key's user no longer exists")
        secret = self.keyring.open(token.secret_sealed or "")
        self._touch(token.id)
        return (
            Principal(name=user.name, user_id=user.id, token_id=token.id),
            secret,
            token.project_id,
        )

    # -- what the API reads and records (it never speaks to the store itself) --------------------
    def users(self) -> list[User]:
        return self.store.users()

    def project_names(self) -> dict[str, str]:
        """Every project's name by id."""
        return {p.id: p.name for p in self.store.projects()}

    def members(self, project_id: str) -> list[tuple[str, str]]:
        """(user name, role) of each member of the project."""
        return self.store.members(project_id)

    def token(self, token_id: str) -> Token | None:
        return self.store.token(token_id)

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Audit entries, newest first (filters: project, user, action, since, limit)."""
        return self.store.audit(**filters)

    def record(self, *, project_id: str | None = None, **entry: Any) -> None:
        """One audit entry (user, project, action, target, result, detail), also told to the
        event stream of its project (``project_id``)."""
        self.store.record(**entry)
        self.events.publish(
            "audit",
            project_id,
            user=entry.get("user"),
            action=entry.get("action"),
            target=entry.get("target"),
            result=entry.get("result"),
        )

    def prune_audit(self, retention_days: float) -> int:
        """Forget audit entries older than the retention (0: keep everything)."""
        if retention_days <= 0:
            return 0
        gone = self.store.prune_audit(time.time() - retention_days * 86400)
        if gone:
            log.info("audit: %d entries older than %g days removed", gone, retention_days)
        return gone

    def tokens(self, principal: Principal) -> list[Token]:
        return self.store.tokens(None if principal.superuser else principal.user_id)

    def revoke(self, principal: Principal, token_id: str) -> Token:
        """By its id, or an AWS access key by its key id (``GKIA...``: the id its user has)."""
        token = self.store.token(token_id)
        if token is None and token_id.startswith(ACCESS_KEY_PREFIX):
            found = self.store.access_key_holder(token_id)
            token = found[0] if found else None
        if token is None or not (principal.superuser or token.user_id == principal.user_id):
            raise NotFound(f"no token {token_id!r}")  # another's is as good as missing
        self.store.revoke(token.id)
        return token


def _granted(project: Project, key: str, host_cpus: int) -> float | int | None:
    """What the administrator granted for ``key``, as it applies. An unset cpu_limit is not
    "no limit": the project's VMs may use max_cpus cores, or with that unset too, the host's
    (QuotaService.limits); an admin setting one must stay under that."""
    value = getattr(project, key)
    if key == "cpu_limit" and value is None:
        return project.max_cpus if project.max_cpus is not None else host_cpus
    return value


def _checked_quotas(quotas: dict[str, float | int | None]) -> dict[str, float | int | None]:
    allowed = {q.field for q in QUOTAS + LIMITS}
    out: dict[str, float | int | None] = {}
    for key, value in quotas.items():
        if key not in allowed:
            raise InvalidInput(f"unknown quota {key!r}")
        if value is not None and (isinstance(value, bool) or not math.isfinite(value) or value < 0):
            raise InvalidInput(f"{key} must be a positive number")
        # The store keeps 64-bit integers, and a control group's memory limit is in bytes.
        most = BIGINT_MAX // MIB if key == "memory_limit_mib" else BIGINT_MAX
        if value is not None and value > most:
            raise InvalidInput(f"{key} must be at most {most}, not {value}")
        # Stored only if the kernel will take it: a limit kept but never applied would leave
        # the project's VMs with whatever the control group had before.
        if (
            key == "cpu_limit"
            and value is not None
            and not (MIN_QUOTA_US <= cpu_quota_us(value) <= MAX_QUOTA_US)
        ):
            raise InvalidInput(
                f"cpu_limit must be {MIN_CPU_CORES:g} to {MAX_QUOTA_US // PERIOD_US} cores "
                f"(the kernel's CPU quota is at least {MIN_QUOTA_US} us per {PERIOD_US} us), "
                f"not {value:g}"
            )
        out[key] = value
    return out
