"""Projects, users, memberships, tokens and audit tables."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from gureum.errors import Conflict
from gureum.ids import new_id
from gureum.model.tenancy import Project, Role, Token, User
from gureum.store.db import Database
from gureum.store.schema import audit, keypairs, memberships, projects, tokens, users


class TenancyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- projects --------------------------------------------------------------------------------
    def add_project(self, project: Project) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(insert(projects).values(**project.__dict__))
        except IntegrityError as exc:
            raise Conflict(f"a project named {project.name!r} already exists") from exc

    def projects(self) -> list[Project]:
        with self.db.read() as conn:
            return [
                Project(**dict(r))
                for r in conn.execute(select(projects).order_by(projects.c.created_at)).mappings()
            ]

    def project(self, ref: str) -> Project | None:
        with self.db.read() as conn:
            row = (
                conn.execute(
                    select(projects).where((projects.c.id == ref) | (projects.c.name == ref))
                )
                .mappings()
                .first()
            )
        return Project(**dict(row)) if row else None

    def update_project(self, project_id: str, **fields: Any) -> None:
        if not fields:
            return
        with self.db.begin() as conn:
            conn.execute(update(projects).where(projects.c.id == project_id).values(**fields))

    def remove_project(self, project_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(memberships).where(memberships.c.project_id == project_id))
            conn.execute(delete(keypairs).where(keypairs.c.project_id == project_id))
            conn.execute(delete(projects).where(projects.c.id == project_id))

    # -- users -----------------------------------------------------------------------------------
    def add_user(self, user: User) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(insert(users).values(**user.__dict__))
        except IntegrityError as exc:
            raise Conflict(f"a user named {user.name!r} already exists") from exc

    def users(self) -> list[User]:
        with self.db.read() as conn:
            return [
                User(**dict(r))
                for r in conn.execute(select(users).order_by(users.c.created_at)).mappings()
            ]

    def user(self, ref: str) -> User | None:
        with self.db.read() as conn:
            row = (
                conn.execute(select(users).where((users.c.id == ref) | (users.c.name == ref)))
                .mappings()
                .first()
            )
        return User(**dict(row)) if row else None

    def remove_user(self, user_id: str) -> None:
        with self.db.begin() as conn:
            name = conn.execute(select(users.c.name).where(users.c.id == user_id)).scalar()
            conn.execute(delete(memberships).where(memberships.c.user_id == user_id))
            conn.execute(
                update(tokens)
                .where(tokens.c.user_id == user_id)
                .values(revoked_at=time.time(), former_user=name)
            )
            conn.execute(delete(users).where(users.c.id == user_id))

    # -- memberships -----------------------------------------------------------------------------
    def set_role(self, project_id: str, user_id: str, role: Role) -> None:
        with self.db.begin() as conn:
            conn.execute(
                delete(memberships).where(
                    (memberships.c.project_id == project_id) & (memberships.c.user_id == user_id)
                )
            )
            conn.execute(
                insert(memberships).values(project_id=project_id, user_id=user_id, role=role.value)
            )

    def remove_member(self, project_id: str, user_id: str) -> bool:
        with self.db.begin() as conn:
            res = conn.execute(
                delete(memberships).where(
                    (memberships.c.project_id == project_id) & (memberships.c.user_id == user_id)
                )
            )
        return bool(res.rowcount)

    def members(self, project_id: str) -> list[tuple[str, str]]:
        """(user name, role) of a project."""
        query = (
            select(users.c.name, memberships.c.role)
            .join(users, users.c.id == memberships.c.user_id)
            .where(memberships.c.project_id == project_id)
            .order_by(users.c.name)
        )
        with self.db.read() as conn:
            return [(n, r) for n, r in conn.execute(query)]

    def share_a_project(self, user_a: str, user_b: str) -> bool:
        """Whether two users hold a role in one same project."""
        other = memberships.alias("other")
        query = (
            select(func.count())
            .select_from(memberships)
            .join(other, other.c.project_id == memberships.c.project_id)
            .where((memberships.c.user_id == user_a) & (other.c.user_id == user_b))
        )
        with self.db.read() as conn:
            return bool(conn.execute(query).scalar())

    def memberships_of(self, user_id: str) -> list[tuple[str, str]]:
        """(project id, role) of a user."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(memberships.c.project_id, memberships.c.role).where(
                    memberships.c.user_id == user_id
                )
            )
            return [(p, r) for p, r in rows]

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, token: Token) -> None:
        with self.db.begin() as conn:
            conn.execute(insert(tokens).values(**token.__dict__))

    def token_holder(self, secret_hash: str) -> tuple[Token, User | None] | None:
        """The token with this hash and its user (None if the user is gone), in one query:
        every authenticated request starts here."""
        return self._holder(tokens.c.secret_hash == secret_hash)

    def access_key_holder(self, access_key_id: str) -> tuple[Token, User | None] | None:
        """The AWS access key with this id and its user (None if the user is gone)."""
        return self._holder(tokens.c.access_key_id == access_key_id)

    def _holder(self, where: ColumnElement[bool]) -> tuple[Token, User | None] | None:
        query = select(tokens, users.c.name.label("user_name"), users.c.created_at.label("uc"))
        query = query.outerjoin(users, users.c.id == tokens.c.user_id)
        with self.db.read() as conn:
            row = conn.execute(query.where(where)).mappings().first()
        if row is None:
            return None
        values = dict(row)
        name, created = values.pop("user_name"), values.pop("uc")
        token = Token(**values)
        return token, User(token.user_id, name, created) if name is not None else None

    def project_role(self, ref: str, user_id: str) -> tuple[Project, Role | None] | None:
        """A project by id or name, and this user's role there (None: not a member)."""
        role = memberships.c.role
        query = select(projects, role).outerjoin(
            memberships,
            (memberships.c.project_id == projects.c.id) & (memberships.c.user_id == user_id),
        )
        query = query.where((projects.c.id == ref) | (projects.c.name == ref))
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        values = dict(row)
        value = values.pop("role")
        return Project(**values), Role(value) if value else None

    def token(self, token_id: str) -> Token | None:
        with self.db.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).mappings().first()
        return Token(**dict(row)) if row else None

    def tokens(self, user_id: str | None = None) -> list[Token]:
        query = select(tokens).order_by(tokens.c.created_at)
        if user_id is not None:
            query = query.where(tokens.c.user_id == user_id)
        with self.db.read() as conn:
            return [Token(**dict(r)) for r in conn.execute(query).mappings()]

    def live_tokens(self, user_id: str, now: float) -> int:
        """How many of a user's tokens still work: neither revoked nor expired."""
        query = select(func.count()).where(
            (tokens.c.user_id == user_id)
            & tokens.c.revoked_at.is_(None)
            & (tokens.c.expires_at.is_(None) | (tokens.c.expires_at > now))
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def revoke(self, token_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(tokens).where(tokens.c.id == token_id).values(revoked_at=time.time())
            )

    def touch(self, token_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(tokens).where(tokens.c.id == token_id).values(last_used_at=time.time())
            )

    # -- audit -----------------------------------------------------------------------------------
    def record(
        self,
        *,
        user: str,
        project: str | None,
        action: str,
        target: str | None,
        result: int,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(audit).values(
                    id=new_id("a-"),
                    at=time.time(),
                    user_name=user,
                    project=project,
                    action=action,
                    target=target,
                    result=result,
                    detail=json.dumps(detail) if detail else None,
                )
            )

    def prune_audit(self, before: float) -> int:
        """Delete the entries recorded before ``before``; how many went."""
        with self.db.begin() as conn:
            return int(conn.execute(delete(audit).where(audit.c.at < before)).rowcount or 0)

    def audit(
        self,
        *,
        project: str | None = None,
        user: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        query = select(audit).order_by(audit.c.at.desc()).limit(limit)
        if project is not None:
            query = query.where(audit.c.project == project)
        if user is not None:
            query = query.where(audit.c.user_name == user)
        if action is not None:
            query = query.where(audit.c.action == action)
        if since is not None:
            query = query.where(audit.c.at >= since)
        with self.db.read() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["user"] = row.pop("user_name")
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        return rows
