"""Configuration: one home folder, a few knobs, read from ``$GUREUM_HOME/config.toml`` and env.

Everything gureum keeps lives under ``home`` so that several instances of the service (tests,
users) can run side by side without seeing each other. Environment variables win over the file
so that a test can override one knob without writing files.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from gureum.errors import InvalidInput
from gureum.model.cluster import ADDRESS

DEFAULT_HOME = "/var/lib/gureum"


@dataclass(frozen=True)
class Config:
    home: Path = Path(DEFAULT_HOME)
    # "host:port" to also serve the API over TCP; the unix socket is always served.
    listen_tcp: str | None = None
    # auto: KVM only where the CPU advertises vmx/svm and /dev/kvm opens; else TCG.
    accel: str = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    # The UEFI firmware (OVMF, code and variables in one file) for disks that boot only from an
    # EFI system partition; Debian's ovmf package. SeaBIOS, QEMU's own, boots the others.
    ovmf_firmware: str = "/usr/share/ovmf/OVMF.fd"
    # Admission control: guest memory may use the host's memory minus this reserve, and vCPUs
    # may be over-committed up to this ratio of host CPUs. None = max(1 GiB, 10% of host).
    memory_reserve_mib: int | None = None
    cpu_overcommit: float = 4.0
    boot_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    # TCG's translation cache; QEMU's default (1 GiB on 64-bit hosts) makes each idle VM's RSS
    # large for no gain on small guests.
    tcg_tb_size_mib: int = 128
    reconcile_interval_s: float = 2.0
    # How often every instance's CPU, memory, disk and NIC figures are measured (/metrics and
    # the console's graphs, which keep an hour of them).
    metrics_interval_s: float = 10.0
    # Per API token: sustained requests per second and burst (0: no limit).
    rate_limit_per_s: float = 20.0
    rate_limit_burst: float = 40.0
    # Per user, all their tokens together (0: no limit): more tokens are not more requests.
    user_rate_limit_per_s: float = 40.0
    user_rate_limit_burst: float = 80.0
    # Tokens a user may hold at once (neither revoked nor expired); 0: no bound.
    max_tokens_per_user: int = 50
    max_request_bytes: int = 1024 * 1024
    # Port forwards listen on host ports from this one up: below 1024 are the host's own
    # services' (ssh, a web server...), not a tenant's to take. 1 allows every port.
    forward_min_host_port: int = 1024
    # Audit entries older than this are deleted (at start and hourly); 0: kept forever.
    audit_retention_days: float = 90.0
    # None: the SQLite file under home. A postgresql:// URL (psycopg 3) to keep the store in
    # PostgreSQL instead, e.g. postgresql://gureum@/gureum?host=/run/postgresql
    database_url: str | None = None
    # Downloaded Debian packages; may be shared by several homes (tests, demo) to save time.
    cache_dir_override: str | None = None
    # Where --nat networks go out: None, the host's own network namespace (its default route);
    # or a named network namespace (the tests give one that stands for the internet).
    nat_uplink_netns: str | None = None
    # DNS servers a --nat network's DNS forwards to, comma-separated. None: the host's own
    # (/etc/resolv.conf, loopback ones left out: a network's namespace cannot reach them).
    nat_dns: str | None = None
    # The largest disk an imported image may be (its virtual size; the file is bounded too).
    image_import_max_bytes: int = 64 << 30
    # The first launch of an image (one a template can be made of) in a shape with no template
    # also makes one, in the background, so the next launches of that shape are clones.
    auto_templates: bool = False
    # The region the EC2 API answers as (its clients sign requests for it: AWS_DEFAULT_REGION).
    ec2_region: str = "gureum-1"
    # This host's name in the cluster's host list (`gureum host list`); empty: its hostname.
    host_name: str = ""
    # Where new instances go among the hosts that can take them: spread (the freest host) or
    # pack (the busiest that fits).
    placement: str = "spread"
    # A host whose last heartbeat is older than this is unreachable: nothing is placed on it.
    host_unreachable_after_s: float = 30.0
    # HOST:PORT where host agents join and report (mutual TLS); empty: no cluster port.
    cluster_listen: str = ""
    # How long a control plane's claim on work for a joined host's instance lasts unrenewed
    # (it renews a third of the way): a control plane that dies leaves its work to another
    # after this.
    work_lease_s: float = 30.0

    # -- derived paths -------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.home / "gureum.db"

    @property
    def socket_path(self) -> Path:
        return self.home / "gureum.sock"

    @property
    def ui_socket_path(self) -> Path:
        """Where `gureum ui` tunnels a browser: every request needs a token or a session."""
        return self.home / "ui.sock"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def cluster_dir(self) -> Path:
        """The cluster CA's key and certificates (a control plane's), 0700."""
        return self.home / "cluster"

    @property
    def agent_dir(self) -> Path:
        """A host agent's key, certificate and the cluster it joined."""
        return self.home / "agent"

    @property
    def project_images_dir(self) -> Path:
        """Images projects made from their VMs: apart from ``images_dir``, whose files every
        VM's user may read, since each is readable by its own project's VMs alone."""
        return self.home / "project-images"

    @property
    def instances_dir(self) -> Path:
        return self.home / "instances"

    @property
    def disks_dir(self) -> Path:
        return self.home / "disks"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def networks_dir(self) -> Path:
        return self.home / "networks"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def runc_dir(self) -> Path:
        """runc's own state of this home's containers (``--root``); not in ``run_dir``,
        whose every folder is an instance's."""
        return self.home / "runc"

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache_dir_override) if self.cache_dir_override else self.home / "cache"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def log_path(self) -> Path:
        return self.home / "service.log"


_ENV = {
    "listen_tcp": "GUREUM_LISTEN",
    "accel": "GUREUM_ACCEL",
    "qemu_binary": "GUREUM_QEMU",
    "ovmf_firmware": "GUREUM_OVMF",
    "memory_reserve_mib": "GUREUM_MEMORY_RESERVE_MIB",
    "cpu_overcommit": "GUREUM_CPU_OVERCOMMIT",
    "boot_timeout_s": "GUREUM_BOOT_TIMEOUT",
    "stop_timeout_s": "GUREUM_STOP_TIMEOUT",
    "tcg_tb_size_mib": "GUREUM_TCG_TB_SIZE_MIB",
    "reconcile_interval_s": "GUREUM_RECONCILE_INTERVAL",
    "metrics_interval_s": "GUREUM_METRICS_INTERVAL",
    "cache_dir_override": "GUREUM_CACHE_DIR",
    "rate_limit_per_s": "GUREUM_RATE_LIMIT",
    "rate_limit_burst": "GUREUM_RATE_BURST",
    "user_rate_limit_per_s": "GUREUM_USER_RATE_LIMIT",
    "user_rate_limit_burst": "GUREUM_USER_RATE_BURST",
    "max_tokens_per_user": "GUREUM_MAX_TOKENS_PER_USER",
    "max_request_bytes": "GUREUM_MAX_REQUEST_BYTES",
    "forward_min_host_port": "GUREUM_FORWARD_MIN_PORT",
    "audit_retention_days": "GUREUM_AUDIT_RETENTION_DAYS",
    "database_url": "GUREUM_DATABASE_URL",
    "nat_uplink_netns": "GUREUM_NAT_UPLINK_NETNS",
    "nat_dns": "GUREUM_NAT_DNS",
    "image_import_max_bytes": "GUREUM_IMAGE_IMPORT_MAX_BYTES",
    "auto_templates": "GUREUM_AUTO_TEMPLATES",
    "ec2_region": "GUREUM_EC2_REGION",
    "host_name": "GUREUM_HOST_NAME",
    "placement": "GUREUM_PLACEMENT",
    "host_unreachable_after_s": "GUREUM_HOST_UNREACHABLE_AFTER",
    "cluster_listen": "GUREUM_CLUSTER_LISTEN",
    "work_lease_s": "GUREUM_WORK_LEASE",
}


def home_from_env(env: Mapping[str, str] | None = None) -> Path:
    source: Mapping[str, str] = os.environ if env is None else env
    return Path(source.get("GUREUM_HOME") or DEFAULT_HOME)


def load_config(home: Path | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    home = (home or home_from_env(env)).absolute()
    values: dict[str, object] = {}
    path = home / "config.toml"
    if path.exists():
        try:
            values.update(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{path}: {exc}") from exc
    for key, var in _ENV.items():
        if env.get(var):
            values[key] = env[var]
    known = {f.name: f for f in fields(Config)}
    kwargs: dict[str, object] = {"home": home}
    for key, raw in values.items():
        if key not in known or key == "home":
            raise InvalidInput(f"unknown configuration key {key!r} in {path} or environment")
        kwargs[key] = _coerce(key, raw, known[key].type)
    # Each value was coerced to its field's type by _coerce above.
    config = Config(**kwargs)  # type: ignore[arg-type]
    if config.accel not in ("auto", "kvm", "tcg"):
        raise InvalidInput(f"accel must be auto, kvm or tcg, not {config.accel!r}")
    if config.cluster_listen and not ADDRESS.fullmatch(config.cluster_listen):
        raise InvalidInput(f"cluster_listen is HOST:PORT, not {config.cluster_listen!r}")
    if config.cluster_listen and not (config.database_url or "").startswith("postgresql"):
        # Several control planes, and hosts that outlive any one of them, share one store:
        # SQLite is a file on one machine.
        raise InvalidInput(
            "a cluster (cluster_listen) needs PostgreSQL: set database_url "
            "(GUREUM_DATABASE_URL=postgresql://...); SQLite serves one host"
        )
    if not 3 <= config.work_lease_s <= 3600:
        raise InvalidInput(f"work_lease_s is from 3 to 3600 seconds, not {config.work_lease_s:g}")
    if config.placement not in ("spread", "pack"):
        raise InvalidInput(f"placement must be spread or pack, not {config.placement!r}")
    return config


def _coerce(key: str, raw: object, type_name: object) -> object:
    text = str(type_name)
    if text == "bool":
        if isinstance(raw, bool):  # TOML's own true and false
            return raw
        word = str(raw).strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise InvalidInput(f"configuration {key}: {raw!r} is not true or false")
    try:
        if "float" in text:
            # raw is a TOML number or an environment string: float() takes either.
            return float(raw)  # type: ignore[arg-type]
        if "int" in text:
            # raw is a TOML number or an environment string: int() takes either.
            return int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"configuration {key}: {raw!r} is not a number") from exc
    return str(raw)
