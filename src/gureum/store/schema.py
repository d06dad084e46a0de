"""The current schema as SQLAlchemy Core tables, for queries. Migrations own the DDL."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, MetaData, Table, Text, UniqueConstraint

from gureum.model.tenancy import LIMITS, QUOTAS, Amount

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("image", Text, nullable=False),
    Column("image_version", Text, nullable=False),
    Column("cpus", BigInteger, nullable=False),
    Column("memory_mib", BigInteger, nullable=False),
    Column("disk_bytes", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    Column("state_reason", Text),
    Column("accel", Text),
    Column("pid", BigInteger),
    Column("boot", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("root_layer", Text),
    Column("hardware", Text),
    Column("user_data", Text),
    Column("ssh_keys", Text),
    Column("uid", BigInteger),
    Column("autostart", BigInteger, nullable=False, server_default="0"),
    Column("host_keys", Text),
    Column("template_id", Text),  # the template it was cloned from, if it was
    Column("kind", Text, nullable=False, server_default="vm"),  # vm or container
    Column("host", Text),  # the host it was placed on (NULL before hosts were recorded: this one)
    Column("spread_group", Text),  # no two of one group on one host
)

# Host-wide settings the administrator changes at run time (the pool's size), one value each.
settings = Table(
    "settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

sequences = Table(
    "sequences",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

layers = Table(
    "layers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("instance_id", Text),
    Column("path", Text, nullable=False),
    Column("backing", Text),
    Column("created_at", Float, nullable=False),
    Column("base_image", Text),
    Column("host", Text),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Text, primary_key=True),
    Column("instance_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("layer", Text, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("consistency", Text, nullable=False),
    Column("hardware", Text, nullable=False),
    Column("disk_bytes", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

operations = Table(
    "operations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text),
    Column("kind", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", Text, nullable=False),
    Column("error", Text),
    Column("result", Text),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("owner", Text),  # the control plane (host name) running it; None: from before
)

hosts = Table(
    "hosts",
    metadata,
    Column("name", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("accel", Text, nullable=False),
    Column("cpus", BigInteger, nullable=False),
    Column("memory_mib", BigInteger, nullable=False),
    Column("memory_reserve_mib", BigInteger, nullable=False),
    Column("cpu_overcommit", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("address", Text),  # where its agent answers (None: this host, in-process)
    Column("cluster_port", Text),  # a control plane's: where agents report to it
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("secret_hash", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
    Column("created_at", Float, nullable=False),
)

work = Table(
    "work",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("instance_id", Text),
    Column("kind", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", Text, nullable=False),  # queued, claimed, done, failed
    Column("owner", Text),
    Column("lease_until", Float),
    Column("attempts", BigInteger, nullable=False),
    Column("result", Text),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)

instance_leases = Table(
    "instance_leases",
    metadata,
    Column("instance_id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("until", Float, nullable=False),
)

images = Table(
    "images",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Text, nullable=False),
    Column("kernel_version", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("files", Text, nullable=False),
    Column("packages", Text, nullable=False),
    Column("disk_virtual_bytes", BigInteger, nullable=False),
    Column("built_at", Float, nullable=False),
    Column("default_user", Text),
    Column("origin", Text),
    Column("firmware", Text),
    Column("project_id", Text),
    Column("description", Text),
)

networks = Table(
    "networks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("subnet", Text, nullable=False),
    Column("nat", BigInteger, nullable=False),
    Column("imds_tokens_required", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("vni", BigInteger, unique=True),  # its VXLAN id where it spans hosts
)

nics = Table(
    "nics",
    metadata,
    Column("id", Text, primary_key=True),
    Column("instance_id", Text, nullable=False),
    Column("network_id", Text, nullable=False),
    Column("slot", BigInteger, nullable=False),
    Column("mac", Text, nullable=False, unique=True),
    Column("ip", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

templates = Table(
    "templates",
    metadata,
    Column("id", Text, primary_key=True),
    Column("image", Text, nullable=False),
    Column("image_version", Text, nullable=False),
    Column("cpus", BigInteger, nullable=False),
    Column("memory_mib", BigInteger, nullable=False),
    Column("nics", BigInteger, nullable=False),
    Column("disk_bytes", BigInteger, nullable=False),
    Column("instance_id", Text, nullable=False),
    Column("snapshot_id", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("image", "image_version", "cpus", "memory_mib", "nics"),
)

keypairs = Table(
    "keypairs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "name"),
)

tags = Table(  # EC2's tags on a project's resources (by gureum id)
    "tags",
    metadata,
    Column("resource_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("project_id", Text, nullable=False),
)

secgroups = Table(
    "secgroups",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

secgroup_rules = Table(
    "secgroup_rules",
    metadata,
    Column("id", Text, primary_key=True),
    Column("secgroup_id", Text, nullable=False),
    Column("protocol", Text, nullable=False),
    Column("port_from", BigInteger),
    Column("port_to", BigInteger),
    Column("cidr", Text),
    Column("source_group", Text),
    Column("created_at", Float, nullable=False),
)

instance_secgroups = Table(
    "instance_secgroups",
    metadata,
    Column("instance_id", Text, primary_key=True),
    Column("secgroup_id", Text, primary_key=True),
)

forwards = Table(
    "forwards",
    metadata,
    Column("id", Text, primary_key=True),
    Column("instance_id", Text, nullable=False),
    Column("host_address", Text, nullable=False),
    Column("host_port", BigInteger, nullable=False),
    Column("guest_port", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    # One column a quota (model/tenancy.py: QUOTAS, then LIMITS).
    *[Column(q.field, Float if q.amount == Amount.CORES else BigInteger) for q in QUOTAS + LIMITS],
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("role", Text, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("secret_hash", Text, nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
    Column("expires_at", Float),
    Column("former_user", Text),  # the user's name, kept when the user is deleted
    Column("access_key_id", Text, unique=True),  # an AWS access key's (EC2 API)
    Column("project_id", Text),
    Column("secret_sealed", Text),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Text, primary_key=True),
    Column("at", Float, nullable=False),
    Column("user_name", Text, nullable=False),
    Column("project", Text),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("result", BigInteger, nullable=False),
    Column("detail", Text),
)
