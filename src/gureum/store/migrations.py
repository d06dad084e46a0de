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
    (
        2,
        "disk layers, snapshots, recorded hardware",
        [
            # Every qcow2 file is a layer; a VM's disk is its top layer and the chain below it.
            # Paths are relative to GUREUM_HOME so a home can move.
            """
            CREATE TABLE layers (
                id TEXT PRIMARY KEY,
                instance_id TEXT,
                path TEXT NOT NULL,
                backing TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE snapshots (
                id TEXT PRIMARY KEY,
                instance_id TEXT NOT NULL,
                name TEXT NOT NULL,
                layer TEXT NOT NULL,
                memory BIGINT NOT NULL,
                consistency TEXT NOT NULL,
                hardware TEXT NOT NULL,
                disk_bytes BIGINT NOT NULL,
                size_bytes BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (instance_id, name)
            )
            """,
            "ALTER TABLE instances ADD COLUMN root_layer TEXT",
            "ALTER TABLE instances ADD COLUMN hardware TEXT",
            # Disks made before layers existed stay where they are, as one-layer chains.
            """
            INSERT INTO layers (id, instance_id, path, backing, created_at)
            SELECT 'l-' || substr(id, 3), id, 'instances/' || id || '/root.qcow2', NULL, created_at
            FROM instances
            """,
            "UPDATE instances SET root_layer = 'l-' || substr(id, 3)",
        ],
    ),
    (
        3,
        "networks, NICs, security groups, port forwards",
        [
            """
            CREATE TABLE networks (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                subnet TEXT NOT NULL,
                nat BIGINT NOT NULL,
                imds_tokens_required BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE nics (
                id TEXT PRIMARY KEY,
                instance_id TEXT NOT NULL,
                network_id TEXT NOT NULL,
                slot BIGINT NOT NULL,
                mac TEXT NOT NULL UNIQUE,
                ip TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (network_id, ip)
            )
            """,
            """
            CREATE TABLE secgroups (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE secgroup_rules (
                id TEXT PRIMARY KEY,
                secgroup_id TEXT NOT NULL,
                protocol TEXT NOT NULL,
                port_from BIGINT,
                port_to BIGINT,
                cidr TEXT,
                source_group TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE instance_secgroups (
                instance_id TEXT NOT NULL,
                secgroup_id TEXT NOT NULL,
                PRIMARY KEY (instance_id, secgroup_id)
            )
            """,
            """
            CREATE TABLE forwards (
                id TEXT PRIMARY KEY,
                instance_id TEXT NOT NULL,
                host_address TEXT NOT NULL,
                host_port BIGINT NOT NULL,
                guest_port BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (host_address, host_port)
            )
            """,
            "ALTER TABLE instances ADD COLUMN user_data TEXT",
            "ALTER TABLE instances ADD COLUMN ssh_keys TEXT",
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
