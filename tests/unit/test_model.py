import itertools

import pytest

from gureum.errors import InvalidState
from gureum.model.instance import (
    ACTIVE,
    BootTimeline,
    State,
    can_transition,
    check_action,
    check_transition,
)
from gureum.model.operation import Operation, OpStatus, Progress


def test_lifecycle_path_is_allowed():
    path = [
        State.PENDING,
        State.STARTING,
        State.RUNNING,
        State.STOPPING,
        State.STOPPED,
        State.STARTING,
        State.RUNNING,
        State.CRASHED,
        State.STARTING,
        State.ERROR,
    ]
    for old, new in itertools.pairwise(path):
        check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.RUNNING),
        (State.PENDING, State.RUNNING),
        (State.CRASHED, State.RUNNING),
        (State.STOPPED, State.STOPPING),
        (State.ERROR, State.RUNNING),
    ],
)
def test_forbidden_transitions(old, new):
    assert not can_transition(old, new)
    with pytest.raises(InvalidState):
        check_transition(old, new)


def test_actions_by_state():
    check_action("exec", State.RUNNING, name="a")
    with pytest.raises(InvalidState, match="cannot exec a: it is stopped"):
        check_action("exec", State.STOPPED, name="a")
    with pytest.raises(InvalidState):
        check_action("start", State.RUNNING, name="a")
    check_action("start", State.CRASHED, name="a")
    assert State.STOPPED not in ACTIVE and State.RUNNING in ACTIVE


def test_a_vm_paused_by_a_full_disk():
    """QEMU pauses a guest on ENOSPC: paused is active (it holds its capacity), comes back to
    running, may be stopped or crash; the guest is frozen, so exec is refused."""
    check_transition(State.RUNNING, State.PAUSED)
    for new in (State.RUNNING, State.STOPPING, State.STOPPED, State.CRASHED):
        check_transition(State.PAUSED, new)
    assert not can_transition(State.STOPPED, State.PAUSED)
    assert State.PAUSED in ACTIVE
    check_action("stop", State.PAUSED, name="a")
    for action in ("exec", "snapshot", "resize", "change NICs of"):
        with pytest.raises(InvalidState, match="it is paused"):
            check_action(action, State.PAUSED, name="a")


def test_boot_timeline_durations():
    boot = BootTimeline()
    assert boot.mark("process_started", 100.0)
    assert boot.mark("kernel_started", 100.5)
    assert not boot.mark("kernel_started", 101.0)  # first one counts
    boot.mark("init_started", 102.0)
    boot.mark("agent_ready", 102.25)
    view = boot.to_dict()
    assert view["total_s"] == 2.25
    durations = [p["since_previous_s"] for p in view["phases"]]
    assert durations == [None, 0.5, 1.5, 0.25, None, None, None, None, None]
    assert BootTimeline.from_raw(boot.raw()) == boot
    # A clone is ready once told it is a new machine, after its agent answers.
    boot.mark("identity_refreshed", 102.75)
    assert boot.to_dict()["total_s"] == 2.75
    # A QEMU of the pool was started long before: the launch counts from when it was taken.
    pooled = BootTimeline()
    pooled.mark("taken_from_pool", 200.0)
    pooled.mark("memory_restored", 200.05)
    pooled.mark("agent_ready", 200.1)
    pooled.mark("identity_refreshed", 200.3)
    pooled.mark("network_up", 200.5)  # asked for in the background: after it is ready
    view = pooled.to_dict()
    assert view["total_s"] == 0.3
    shown = [(p["event"], p["since_previous_s"]) for p in view["phases"] if p["at"] is not None]
    assert shown == [
        ("taken_from_pool", None),
        ("memory_restored", 0.05),
        ("agent_ready", 0.05),
        ("identity_refreshed", 0.2),
        ("network_up", 0.2),
    ]
    with pytest.raises(ValueError):
        boot.mark("nonsense", 1.0)


def test_operation_progress_window():
    op = Operation(
        "op-1",
        "launch",
        "i-1",
        OpStatus.RUNNING,
        1.0,
        progress=[Progress(1.0, "a"), Progress(2.0, "b"), Progress(3.0, "c")],
    )
    view = op.to_dict(progress_after=1)
    assert [p["message"] for p in view["progress"]] == ["b", "c"]
    assert view["progress_count"] == 3 and not op.done
