"""Versioned schema migrations.

Each migration is frozen once released: a schema change is a new entry at the end, never an
edit of an old one, so any database at any version reaches the same schema. The SQL sticks to
what SQLite and PostgreSQL both accept (TEXT, BIGINT, DOUBLE PRECISION) so one list serves both.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, text

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "instances, operations and images",
        [
            """
            CREATE TABLE instances (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                image TEXT NOT NULL,
                image_version TEXT NOT NULL,
                cpus BIGINT NOT NULL,
                memory_mib BIGINT NOT NULL,
                disk_bytes BIGINT NOT NULL,
                state TEXT NOT NULL,
                state_reason TEXT,
                accel TEXT,
                pid BIGINT,
                boot TEXT NOT NULL DEFAULT '{}',
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE operations (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                status TEXT NOT NULL,
                progress TEXT NOT NULL DEFAULT '[]',
                error TEXT,
                result TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION
            )
            """,
            "CREATE INDEX operations_target ON operations (target)",
            """
            CREATE TABLE images (
                name TEXT PRIMARY KEY,
                version TEXT NOT NULL,
                kernel_version TEXT NOT NULL,
                path TEXT NOT NULL,
                files TEXT NOT NULL,
                packages TEXT NOT NULL,
                disk_virtual_bytes BIGINT NOT NULL,
                built_at DOUBLE PRECISION NOT NULL
            )
            """,
        ],
    ),
]


def current_version(conn: Connection) -> int:
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version BIGINT PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
    )
    row = conn.execute(text("SELECT MAX(version) FROM schema_migrations")).scalar()
    return int(row or 0)


def migrate(conn: Connection) -> list[int]:
    """Apply every migration newer than the database, each in the caller's transaction."""
    applied = []
    have = current_version(conn)
    for version, description, statements in MIGRATIONS:
        if version <= have:
            continue
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(
            text("INSERT INTO schema_migrations VALUES (:v, :d, :t)"),
            {"v": version, "d": description, "t": time.time()},
        )
        applied.append(version)
    return applied


def latest_version() -> int:
    return MIGRATIONS[-1][0]
