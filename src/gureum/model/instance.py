"""Instances: what a user asked for (spec), where it stands (state), how it booted (timeline).

Pure data and rules, no I/O: the service applies these rules, the store persists them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

from gureum.errors import InvalidState, VMOnly
from gureum.model.hardware import Hardware


class State(StrEnum):
    PENDING = "pending"  # admitted, row written, nothing on the host yet
    STARTING = "starting"  # QEMU spawned, guest not ready yet
    RUNNING = "running"  # guest agent answered
    PAUSED = "paused"  # frozen by QEMU on a disk I/O error (host filesystem full); reason says
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"  # QEMU died without the guest asking to power off
    ERROR = "error"  # a start failed (boot timeout, QEMU refused to start...)


# Shown, never stored: an active instance whose host has stopped reporting. What runs there is
# not known until it reports again (its last known state is shown beside it).
UNKNOWN = "unknown"

# States in which a QEMU process may exist and the VM holds host capacity.
ACTIVE = frozenset({State.PENDING, State.STARTING, State.RUNNING, State.PAUSED, State.STOPPING})

# The state machine. Anything not listed is refused with InvalidState.
_TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.STARTING, State.ERROR}),
    State.STARTING: frozenset(
        {State.RUNNING, State.STOPPING, State.STOPPED, State.CRASHED, State.ERROR}
    ),
    State.RUNNING: frozenset(
        {State.STOPPING, State.STOPPED, State.CRASHED, State.STARTING, State.PAUSED}
    ),
    State.PAUSED: frozenset({State.RUNNING, State.STOPPING, State.STOPPED, State.CRASHED}),
    State.STOPPING: frozenset({State.STOPPED, State.CRASHED, State.ERROR}),
    State.STOPPED: frozenset({State.STARTING}),
    State.CRASHED: frozenset({State.STARTING, State.STOPPED}),
    State.ERROR: frozenset({State.STARTING, State.STOPPED}),
}


def can_transition(old: State, new: State) -> bool:
    return new == old or new in _TRANSITIONS[old]


def check_transition(old: State, new: State, *, name: str = "instance") -> None:
    if not can_transition(old, new):
        raise InvalidState(f"{name} is {old.value}; it cannot become {new.value}")


# The user actions and the states they are allowed from (the rest get InvalidState with a hint).
ACTION_FROM: dict[str, frozenset[State]] = {
    "start": frozenset({State.STOPPED, State.CRASHED, State.ERROR}),
    "stop": frozenset({State.RUNNING, State.STARTING, State.PAUSED}),
    "restart": frozenset(
        {State.RUNNING, State.STARTING, State.PAUSED, State.STOPPED, State.CRASHED, State.ERROR}
    ),
    "exec": frozenset({State.RUNNING}),
    "ssh": frozenset({State.RUNNING}),
    "console": frozenset({State.RUNNING, State.STARTING, State.PAUSED}),
    # Live while running, offline while down; never while a boot or stop is under way.
    "snapshot": frozenset({State.RUNNING, State.STOPPED, State.CRASHED, State.ERROR}),
    "resize": frozenset({State.RUNNING, State.STOPPED, State.CRASHED, State.ERROR}),
    "change NICs of": frozenset({State.RUNNING, State.STOPPED, State.CRASHED, State.ERROR}),
    # A restore replaces whatever runs (a paused VM too), but never a boot or stop under way.
    "restore": frozenset({State.RUNNING, State.PAUSED, State.STOPPED, State.CRASHED, State.ERROR}),
}


def check_action(action: str, state: State, *, name: str) -> None:
    if state not in ACTION_FROM[action]:
        allowed = ", ".join(sorted(s.value for s in ACTION_FROM[action]))
        raise InvalidState(f"cannot {action} {name}: it is {state.value} (allowed when: {allowed})")


@dataclass(frozen=True)
class InstanceSpec:
    """What the user asked for. Changes only through explicit user actions."""

    name: str
    image: str
    cpus: int
    memory_mib: int
    disk_bytes: int


# Boot phases, in order. Each is the moment (host wall clock, seconds since the epoch) at which
# the service saw the event; the durations are between consecutive events.
BOOT_EVENTS = (
    "taken_from_pool",
    "process_started",
    "memory_restored",
    "running",
    "kernel_started",
    "init_started",
    "agent_ready",
    "identity_refreshed",
    "network_up",
)


@dataclass
class BootTimeline:
    # A launch from a template given a QEMU that was waiting for it (the host's pool): its
    # start, instead of process_started (that QEMU was spawned long before).
    taken_from_pool: float | None = None
    process_started: float | None = None  # QEMU spawned
    memory_restored: float | None = None  # a restore: saved state loaded (no boot at all)
    # The vCPUs were let run (a pool's QEMU: its state was loaded while it waited).
    running: float | None = None
    kernel_started: float | None = None  # first byte the guest wrote on its serial console
    init_started: float | None = None  # our init printed its start line
    agent_ready: float | None = None  # the guest agent first answered a ping
    # A restore or clone: the guest told it is a new machine (entropy, machine id; for a clone
    # hostname, MACs and DHCP). Ready only then.
    identity_refreshed: float | None = None
    # The guest configured a DHCP lease (it says so on its console; tiny does). At boot before
    # the agent answers; in a clone, which asks for a new lease in the background, just after
    # it is ready.
    network_up: float | None = None

    def mark(self, event: str, at: float) -> bool:
        """Record an event once; returns True when it was new."""
        if event not in BOOT_EVENTS:
            raise ValueError(event)
        if getattr(self, event) is None:
            setattr(self, event, at)
            return True
        return False

    def to_dict(self) -> dict[str, object]:
        phases = []
        previous: float | None = None
        # In the order they happened (a clone's network comes up after it is ready, a cold
        # boot's before); those that did not happen last.
        events = sorted(
            BOOT_EVENTS, key=lambda e: (getattr(self, e) is None, getattr(self, e) or 0)
        )
        for event in events:
            at = getattr(self, event)
            duration = None if at is None or previous is None else round(at - previous, 3)
            phases.append({"event": event, "at": at, "since_previous_s": duration})
            if at is not None:
                previous = at
        ready = self.identity_refreshed or self.agent_ready
        start = self.taken_from_pool or self.process_started
        total = round(ready - start, 3) if ready and start else None
        return {"phases": phases, "total_s": total}

    def raw(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_raw(cls, raw: dict[str, float | None] | None) -> BootTimeline:
        raw = raw or {}
        return cls(**{k: raw.get(k) for k in BOOT_EVENTS})


DEFAULT_PROJECT = "p-default"
# What an instance is: a virtual machine (its own kernel, under QEMU) or a system container (the
# host's kernel, under runc). Shown as ``type``.
KINDS = ("vm", "container")


@dataclass
class Instance:
    id: str
    spec: InstanceSpec
    state: State
    created_at: float
    image_version: str = ""
    accel: str | None = None
    pid: int | None = None
    state_reason: str | None = None
    boot: BootTimeline = field(default_factory=BootTimeline)
    updated_at: float | None = None
    root_layer: str | None = None  # the disk layer the VM writes to (top of its chain)
    hardware: Hardware | None = None  # as QEMU sees it now (None: not yet decided)
    user_data: str | None = None  # served by the metadata service at /latest/user-data
    ssh_keys: tuple[str, ...] = ()  # served at /latest/meta-data/public-keys/
    project_id: str = DEFAULT_PROJECT
    uid: int | None = None  # the unprivileged user its QEMU runs as
    autostart: bool = False  # started by the service's first start after the host booted
    # The guest's SSH host keys (``TYPE BASE64``) as it first reported them through its agent;
    # ``gureum ssh`` accepts no others. A clone makes its own (cloud-init: a new instance id).
    host_keys: tuple[str, ...] = ()
    template_id: str | None = None  # the image template it was cloned from (None: booted)
    kind: str = "vm"  # one of KINDS: what runs it (QEMU, or runc for a system container)
    host: str | None = None  # the host it was placed on (None: not placed yet)
    spread_group: str | None = None  # no two instances of one group are placed on one host

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_container(self) -> bool:
        return self.kind == "container"

    def needs_vm(self, what: str) -> None:
        """Refuse (VMOnly) what only a VM has, naming it."""
        if self.is_container:
            raise VMOnly(f"{what} is for VMs; {self.name} is a container")

    @property
    def running_now(self) -> tuple[int, int] | None:
        """(vCPUs, MiB) the guest has now, if it is active; a resize that applies at the next
        boot changes ``spec`` but not this."""
        if self.state not in ACTIVE or self.hardware is None:
            return None
        return self.hardware.total_cpus, self.hardware.total_memory_mib

    @property
    def host_share(self) -> tuple[int, int]:
        """(vCPUs, MiB) it holds of the host: nothing when down; when active, the larger of
        what runs now and what its next boot gets (a decrease frees nothing until then)."""
        if self.state not in ACTIVE:
            return 0, 0
        now = self.running_now or (0, 0)
        return max(self.spec.cpus, now[0]), max(self.spec.memory_mib, now[1])


def committed(instances: list[Instance]) -> tuple[int, int]:
    """(vCPUs, MiB) the host has given to these instances."""
    shares = [i.host_share for i in instances]
    return sum(c for c, _ in shares), sum(m for _, m in shares)
