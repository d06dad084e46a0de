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
    (
        4,
        "projects, users, roles, API tokens, audit; resources belong to projects",
        [
            """
            CREATE TABLE projects (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                max_instances BIGINT,
                max_cpus BIGINT,
                max_memory_mib BIGINT,
                max_disk_bytes BIGINT,
                max_snapshots BIGINT,
                max_networks BIGINT,
                cpu_limit DOUBLE PRECISION,
                memory_limit_mib BIGINT,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            """
            CREATE TABLE memberships (
                project_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                role TEXT NOT NULL,
                PRIMARY KEY (project_id, user_id)
            )
            """,
            """
            CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                name TEXT NOT NULL,
                secret_hash TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION,
                last_used_at DOUBLE PRECISION
            )
            """,
            """
            CREATE TABLE audit (
                id TEXT PRIMARY KEY,
                at DOUBLE PRECISION NOT NULL,
                user_name TEXT NOT NULL,
                project TEXT,
                action TEXT NOT NULL,
                target TEXT,
                result BIGINT NOT NULL,
                detail TEXT
            )
            """,
            "CREATE INDEX audit_at ON audit (at)",
            # Everything made before projects existed belongs to the project "default".
            """
            INSERT INTO projects (id, name, created_at) VALUES ('p-default', 'default', 0)
            """,
            "ALTER TABLE operations ADD COLUMN project_id TEXT",
            # Names are unique within a project now, not across projects: the three named
            # tables are rebuilt (a UNIQUE constraint cannot be dropped portably).
            """
            CREATE TABLE instances_v4 (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
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
                updated_at DOUBLE PRECISION NOT NULL,
                root_layer TEXT,
                hardware TEXT,
                user_data TEXT,
                ssh_keys TEXT,
                uid BIGINT,
                UNIQUE (project_id, name)
            )
            """,
            """
            INSERT INTO instances_v4 SELECT id, 'p-default', name, image, image_version, cpus,
                memory_mib, disk_bytes, state, state_reason, accel, pid, boot, created_at,
                updated_at, root_layer, hardware, user_data, ssh_keys, NULL FROM instances
            """,
            # Each VM's QEMU runs as a user of its own; ids are handed out once, never again.
            "CREATE TABLE sequences (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO sequences VALUES ('vm_uid', 0)",
            "DROP TABLE instances",
            "ALTER TABLE instances_v4 RENAME TO instances",
            """
            CREATE TABLE networks_v4 (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                subnet TEXT NOT NULL,
                nat BIGINT NOT NULL,
                imds_tokens_required BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (project_id, name)
            )
            """,
            """
            INSERT INTO networks_v4 SELECT id, 'p-default', name, subnet, nat,
                imds_tokens_required, created_at FROM networks
            """,
            "DROP TABLE networks",
            "ALTER TABLE networks_v4 RENAME TO networks",
            """
            CREATE TABLE secgroups_v4 (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (project_id, name)
            )
            """,
            "INSERT INTO secgroups_v4 SELECT id, 'p-default', name, created_at FROM secgroups",
            "DROP TABLE secgroups",
            "ALTER TABLE secgroups_v4 RENAME TO secgroups",
        ],
    ),
    (
        5,
        "tokens may expire",
        ["ALTER TABLE tokens ADD COLUMN expires_at DOUBLE PRECISION"],
    ),
    (
        6,
        "a bottom disk layer records the image disk it is an overlay of",
        [
            "ALTER TABLE layers ADD COLUMN base_image TEXT",
            # Unknown for layers made before: the service settles each once at start
            # (DiskLayers.settle_base_images), from the file itself.
            "UPDATE layers SET base_image = '?' WHERE backing IS NULL",
        ],
    ),
    (
        7,
        "projects may bound their port forwards",
        ["ALTER TABLE projects ADD COLUMN max_forwards BIGINT"],
    ),
    (
        8,
        "an instance may start by itself when its host has booted",
        ["ALTER TABLE instances ADD COLUMN autostart BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        9,
        "a token keeps its user's name when the user is deleted",
        ["ALTER TABLE tokens ADD COLUMN former_user TEXT"],
    ),
    (
        10,
        "an instance records the SSH host keys its guest first reported",
        ["ALTER TABLE instances ADD COLUMN host_keys TEXT"],
    ),
    (
        11,
        "images may be imported: their default user and where they came from",
        [
            "ALTER TABLE images ADD COLUMN default_user TEXT",
            "ALTER TABLE images ADD COLUMN origin TEXT",
        ],
    ),
    (
        12,
        "projects keep SSH key pairs for launches to name",
        [
            """
            CREATE TABLE keypairs (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                public_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (project_id, name)
            )
            """
        ],
    ),
    (
        13,
        "an imported image records the firmware that boots it (bios or uefi)",
        ["ALTER TABLE images ADD COLUMN firmware TEXT"],
    ),
    (
        14,
        "images keep templates (a booted machine saved with its memory); clones name theirs",
        [
            """
            CREATE TABLE templates (
                id TEXT PRIMARY KEY,
                image TEXT NOT NULL,
                image_version TEXT NOT NULL,
                cpus INTEGER NOT NULL,
                memory_mib INTEGER NOT NULL,
                nics INTEGER NOT NULL,
                disk_bytes BIGINT NOT NULL,
                instance_id TEXT NOT NULL,
                snapshot_id TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (image, image_version, cpus, memory_mib, nics)
            )
            """,
            "ALTER TABLE instances ADD COLUMN template_id TEXT",
        ],
    ),
    (
        15,
        "host-wide settings changed at run time (the size of the pool of waiting QEMUs)",
        ["CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)"],
    ),
    (
        16,
        "what each instance is: a VM or a system container (every existing one a VM)",
        ["ALTER TABLE instances ADD COLUMN kind TEXT NOT NULL DEFAULT 'vm'"],
    ),
    (
        17,
        "each container gets a range of host uids no instance ever had",
        ["INSERT INTO sequences VALUES ('container_uid', 0)"],
    ),
    (
        18,
        "AWS access keys for the EC2 API: tokens with a key id, a project and a sealed secret",
        [
            "ALTER TABLE tokens ADD COLUMN access_key_id TEXT",
            "ALTER TABLE tokens ADD COLUMN project_id TEXT",
            "ALTER TABLE tokens ADD COLUMN secret_sealed TEXT",
            "CREATE UNIQUE INDEX tokens_access_key_id ON tokens (access_key_id)",
        ],
    ),
    (
        19,
        "EC2's tags on a project's resources",
        [
            """
            CREATE TABLE tags (
                resource_id TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                project_id TEXT NOT NULL,
                PRIMARY KEY (resource_id, key)
            )
            """,
            "CREATE INDEX tags_project ON tags (project_id)",
        ],
    ),
    (
        20,
        "images a project made from its instances: theirs alone (NULL: the host's catalog)",
        [
            "ALTER TABLE images ADD COLUMN project_id TEXT",
            "ALTER TABLE images ADD COLUMN description TEXT",
        ],
    ),
    (
        21,
        "the hosts instances are placed on, and each instance's host and spread group",
        [
            """
            CREATE TABLE hosts (
                name TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                accel TEXT NOT NULL,
                cpus BIGINT NOT NULL,
                memory_mib BIGINT NOT NULL,
                memory_reserve_mib BIGINT NOT NULL,
                cpu_overcommit DOUBLE PRECISION NOT NULL,
                heartbeat_at DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            "ALTER TABLE instances ADD COLUMN host TEXT",
            "ALTER TABLE instances ADD COLUMN spread_group TEXT",
        ],
    ),
    (
        22,
        "work queued for hosts, claimed under leases; and which control plane acts on an instance",
        [
            """
            CREATE TABLE work (
                id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                instance_id TEXT,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                state TEXT NOT NULL,
                owner TEXT,
                lease_until DOUBLE PRECISION,
                attempts BIGINT NOT NULL,
                result TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION
            )
            """,
            "CREATE INDEX work_waiting ON work (host, state, created_at)",
            """
            CREATE TABLE instance_leases (
                instance_id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                until DOUBLE PRECISION NOT NULL
            )
            """,
        ],
    ),
    (
        23,
        "hosts enrolled with single-use join tokens, and where each host's agent answers",
        [
            """
            CREATE TABLE join_tokens (
                secret_hash TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                address TEXT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                used_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL
            )
            """,
            "ALTER TABLE hosts ADD COLUMN address TEXT",
        ],
    ),
    (
        24,
        "the host each disk layer's file is on (NULL: the control plane's own)",
        ["ALTER TABLE layers ADD COLUMN host TEXT"],
    ),
    (
        25,
        "each network's VXLAN network identifier, for when it spans hosts",
        [
            "ALTER TABLE networks ADD COLUMN vni BIGINT",
            "UPDATE networks SET vni = (SELECT COUNT(*) FROM networks AS n2"
            " WHERE n2.id <= networks.id)",
            "CREATE UNIQUE INDEX networks_vni ON networks (vni)",
        ],
    ),
    (
        26,
        "the control planes' cluster ports, and which control plane runs each operation",
        [
            "ALTER TABLE hosts ADD COLUMN cluster_port TEXT",
            "ALTER TABLE operations ADD COLUMN owner TEXT",
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
