"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # Unknown fields are an error, not silently ignored: a typo must not launch a default VM.
    # Types are strict: JSON true is not the count 1, "512" not 512, 2.0 not 2 CPUs (a float
    # field still takes an integer); NaN and infinities are not numbers anywhere.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. not-found, invalid-input")
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class LaunchIn(Strict):
    name: str = Field(description="instance name: also its hostname", examples=["web1"])
    image: str = Field(examples=["tiny"])
    cpus: int = Field(1, description="virtual CPUs")
    memory_mib: int = Field(256, description="guest memory in MiB")
    disk_gib: float | None = Field(None, description="root disk size in GiB; default: the image's")
    networks: list[str] = Field(
        default_factory=list, description="one NIC per network; default: default"
    )
    secgroups: list[str] = Field(default_factory=list, description="default: the default group")
    user_data: str | None = Field(None, description="served at /latest/user-data")
    ssh_keys: list[str] = Field(default_factory=list, description="OpenSSH public keys")
    keypairs: list[str] = Field(
        default_factory=list, description="the project's key pairs by name: their keys too"
    )
    autostart: bool = Field(False, description="start when the host has booted")
    cold: bool = Field(
        False, description="boot, even where the image has a template of this shape to clone"
    )
    container: bool = Field(
        False,
        description="a system container from the image's files (its own init, on the host's "
        "kernel) instead of a VM",
    )
    host: str | None = Field(None, description="the host it must go on; default: the scheduler's")
    spread_group: str | None = Field(
        None, description="no two instances of one spread group are placed on one host"
    )


class KeyPairIn(Strict):
    name: str = Field(examples=["laptop"])
    public_key: str = Field(description="one OpenSSH public key line (the .pub file)")


class KeyPairOut(BaseModel):
    id: str
    name: str
    public_key: str
    fingerprint: str = Field(description="SHA256:..., as ssh-keygen -l prints it")
    created_at: float


class ExecIn(Strict):
    command: list[str] = Field(min_length=1, examples=[["cat", "/proc/meminfo"]])
    stdin_b64: str | None = Field(None, description="bytes for the command's stdin, base64")
    timeout_s: float = Field(60.0, description="give up after this many seconds")


class ExecOut(BaseModel):
    exit_code: int
    signal: int | None = None
    stdout_b64: str
    stderr_b64: str
    truncated: bool = False


class SshOut(BaseModel):
    instance: str
    id: str
    user: str = Field(description="the image's default user (cloud-init's), who logs in")
    address: str = Field(description="the first NIC's address, on its network")
    port: int
    host_keys: list[str] = Field(
        description="the guest's SSH host keys (TYPE BASE64), as it first reported them "
        "through its agent: the only ones a client should accept"
    )


class BootPhase(BaseModel):
    event: str
    at: float | None
    since_previous_s: float | None


class BootOut(BaseModel):
    phases: list[BootPhase]
    total_s: float | None


class InstanceOut(BaseModel):
    id: str
    name: str
    project: str = Field(description="the project's name")
    state: str = Field(
        description="pending, starting, running, paused, stopping, stopped, crashed, error"
    )
    state_reason: str | None
    image: str
    image_version: str
    cpus: int
    memory_mib: int
    disk_gib: float
    disk_bytes: int
    accel: str | None = Field(description="kvm or tcg")
    pid: int | None
    mac: str | None
    nics: list[dict[str, Any]]
    secgroups: list[str]
    forwards: list[dict[str, Any]]
    generation_id: str | None = Field(description="the vmgenid GUID; new on every restore/clone")
    pending_next_boot: dict[str, Any] = Field(
        description="resizes that take effect at the next boot (hot-plug could not apply them)"
    )
    snapshots: int
    autostart: bool = False
    template_id: str | None = Field(
        None, description="the image template it was cloned from; null: it booted"
    )
    placement: dict[str, Any] = Field(
        default_factory=dict, description="host: where it was placed; spread_group: its group"
    )
    type: Literal["vm", "container"] = Field(
        "vm", description="vm: a virtual machine under QEMU; container: a system container"
    )
    created_at: float
    updated_at: float | None
    boot: BootOut
    host: dict[str, Any]
    usage: dict[str, Any] | None = Field(
        None,
        description="CPU % and memory between the last two metrics rounds (null until two "
        "rounds have seen it running)",
    )


class ProgressOut(BaseModel):
    index: int
    at: float
    message: str
    fraction: float | None


class OperationOut(BaseModel):
    id: str
    kind: str
    target: str
    status: str = Field(description="running, succeeded or failed")
    created_at: float
    finished_at: float | None
    progress_count: int
    progress: list[ProgressOut]
    error: ErrorBody | None
    result: dict[str, Any] | None


class LaunchOut(BaseModel):
    instance: InstanceOut
    operation: OperationOut


class ImageOut(BaseModel):
    name: str
    version: str
    kernel_version: str
    path: str | None = Field(description="the folder on the host; the administrator's only")
    files: dict[str, dict[str, Any]]
    packages: dict[str, str]
    disk_virtual_bytes: int
    disk_gib: float
    size_bytes: int
    built_at: float
    boot: str = Field(description="kernel (booted directly) or firmware (the disk's bootloader)")
    default_user: str | None = Field(description="who `gureum ssh` logs in as, if not root")
    origin: str = Field(
        description="built, imported qcow2 / imported raw, or from instance NAME (ID)"
    )
    firmware: str | None = Field(
        description="an imported image's: bios (SeaBIOS) or uefi (OVMF) boots its bootloader"
    )
    templates: list[dict[str, Any]] | None = Field(
        None, description="GET of one image: its templates, each with its number of clones"
    )
    project_id: str | None = Field(
        None, description="the project whose own image it is; null: the host's catalog"
    )
    description: str = ""


class ImageIn(Strict):
    name: str = Field(description="the new image's name (one namespace on the host)")
    instance: str = Field(description="the VM whose disk becomes the image, running or stopped")
    description: str = Field("", description="at most 255 printable characters")


class TemplateIn(Strict):
    cpus: int = Field(1, description="virtual CPUs of the saved machine")
    memory_mib: int = Field(256, description="its memory in MiB")
    nics: int = Field(1, description="its NICs (0 to 4); a clone puts each on its own network")


class TemplatesRemovedOut(BaseModel):
    image: str
    removed: list[str] = Field(description="the ids of the templates deleted")


class HostOut(BaseModel):
    accel: str
    accel_reason: str
    capacity: dict[str, Any] = Field(description="the host's; empty but for the administrator")
    committed: dict[str, Any] = Field(description="vCPUs and memory of active VMs in the view")
    instances: int
    store: str = Field(description="where the service keeps its state: sqlite or postgresql")
    view: str = Field(
        description="host: the whole host (the administrator); projects: the caller's projects"
    )


class HostEntryOut(BaseModel):
    name: str
    state: str = Field(description="ready, or cordoned: no new instance is placed on it")
    local: bool = Field(description="the host this service runs on")
    accel: str
    capacity: dict[str, Any]
    committed: dict[str, Any] = Field(description="vCPUs and memory of its active VMs")
    instances: int = Field(description="instances placed on it, whatever their state")
    heartbeat_at: float = Field(description="when it last reported")
    address: str | None = Field(None, description="where its agent answers; null: this host")


class HostCheckOut(BaseModel):
    host: str
    round_trip_ms: float = Field(description="a new TLS connection and one request")
    facts: dict[str, Any] = Field(description="what the agent says of its host")


class EnrolIn(Strict):
    name: str = Field(description="the host's name in the cluster")
    address: str = Field(description="HOST:PORT where its agent will answer")


class EnrolOut(BaseModel):
    host: str
    token: str = Field(description="for `gureum agent --join`: single-use, shown once")
    expires_at: float


class PoolIn(Strict):
    size: int = Field(description="QEMUs kept waiting per template (0 to 16; 0: no pool)")


class PoolOut(BaseModel):
    size: int = Field(description="QEMUs kept waiting per template")
    waiting_qemu_mib: int = Field(description="host memory each waiting QEMU is counted for")
    templates: list[dict[str, Any]] = Field(description="per template: how many wait now")
    waiting: int = Field(description="waiting QEMUs, all templates together")
    taken: int = Field(description="launches served from the pool since the service started")
    last_error: str | None = Field(description="why the pool is short of its size, if it is")


class VersionOut(BaseModel):
    version: str
    api: str


class SnapshotIn(Strict):
    name: str = Field(examples=["before-upgrade"])
    memory: bool = Field(False, description="also save memory: a restore resumes the running VM")


class SnapshotOut(BaseModel):
    id: str
    instance_id: str
    name: str
    memory: bool
    consistency: str = Field(description="offline, fsfreeze, paused (memory) or crash-consistent")
    cpus: int
    memory_mib: int
    disk_gib: float
    size_bytes: int
    created_at: float
    depended_on_by: list[str] = Field(default_factory=list)
    disk_data_kept_for: list[str] | None = None


class CloneIn(Strict):
    name: str = Field(description="the new instance's name (and hostname)")


class ResizeIn(Strict):
    cpus: int | None = None
    memory_mib: int | None = None
    disk_gib: float | None = Field(None, description="grow only; shrinking is refused")


class NetworkIn(Strict):
    name: str = Field(examples=["backend"])
    subnet: str = Field(examples=["10.80.1.0/24"])
    imds_tokens_required: bool = Field(False, description="metadata answers IMDSv2 (token) only")
    nat: bool = Field(False, description="egress NAT: guests reach out through the uplink")


class NetworkOut(BaseModel):
    id: str
    name: str
    subnet: str
    gateway: str
    nat: bool
    imds_tokens_required: bool
    created_at: float
    namespace: str
    instances: list[dict[str, Any]]


class SecGroupIn(Strict):
    name: str


class RuleIn(Strict):
    ingress: str = Field(examples=["tcp/80"], description="tcp/PORT[-PORT], udp/..., icmp, all")
    from_cidr: str | None = Field(None, examples=["0.0.0.0/0"])
    from_group: str | None = None


class SecGroupOut(BaseModel):
    id: str
    name: str
    rules: list[dict[str, Any]]
    instances: int
    created_at: float


class ForwardIn(Strict):
    mapping: str = Field(examples=["8080:80"], description="[ADDRESS:]HOSTPORT:GUESTPORT")


class ForwardOut(BaseModel):
    id: str
    instance: str
    host: str
    guest: str
    host_address: str
    host_port: int
    guest_port: int
    created_at: float


class NicIn(Strict):
    network: str


class NicOut(BaseModel):
    id: str
    network: str
    slot: int
    mac: str
    ip: str
    applied: str | None = None
    note: str | None = Field(
        default=None, description="set when a live NIC was plugged but the guest did not take it up"
    )


class MetricsPointOut(BaseModel):
    t: float = Field(description="Unix time at the end of the interval")
    cpu_percent: float | None = Field(description="CPU time per second, in % of one host CPU")
    memory_bytes: int | None = Field(description="QEMU's resident memory (a container: its group)")
    guest_memory_used_bytes: int | None = Field(
        description="MemTotal - MemAvailable, from the guest"
    )
    guest_memory_total_bytes: int | None
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None = Field(description="bytes per second the guest received")
    net_tx_bps: float | None


class MetricsHistoryOut(BaseModel):
    instance: str
    interval_s: float
    history_s: float
    points: list[MetricsPointOut]
