"""The HostAgent interface over the wire (issue 17): each method that travels has arguments and
results that survive the trip as the interface types them; paths are re-rooted at each end and
never climb out of the receiver's home; anything else the agent is sent is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from gureum.engine.qemu.agent import ExecResult
from gureum.errors import InvalidInput
from gureum.host import remote_calls
from gureum.host.interface import NetworkPlan
from gureum.host.remote_calls import REMOTE_METHODS, REMOTE_ROOT, decode, decode_call, encode
from gureum.host.stats import InstanceStats
from gureum.model.hardware import Hardware
from gureum.model.network import Network, Nic, Rule
from gureum.network.firewall import Port

HOME = Path("/var/lib/gureum-h2")
NET = Network("n-0123456789ab", "p-default", "lan", "10.90.0.0/24", False, True, 1.5)
NIC = Nic("c-0123456789ab", "i-0123456789ab", "n-0123456789ab", 0, "52:54:00:12:34:56",
          "10.90.0.2", 3.0)  # fmt: skip
HW = Hardware(1, 8, 256, 1024, "0" * 32, (3,), (128,), ((0, "52:54:00:12:34:56", NET.id),))


def travels(value, hint):  # type: ignore[no-untyped-def]
    """What arrives at the agent when the control plane sends ``value``."""
    import json

    wire = json.loads(json.dumps(encode(value, hint, REMOTE_ROOT)))
    return decode(wire, hint, HOME)


def test_arguments_arrive_as_the_interface_types_them() -> None:
    assert travels(REMOTE_ROOT / "disks/i-1/top.qcow2", Path) == HOME / "disks/i-1/top.qcow2"
    assert (
        travels(REMOTE_ROOT / "images/tiny/v1/disk.qcow2", Path)
        == HOME / "images/tiny/v1/disk.qcow2"
    )
    assert travels(NET, Network) == NET
    rule = Rule("r-1", "sg-1", "tcp", 22, 22, "10.0.0.0/8", None, 2.0)
    plan = NetworkPlan([(NIC, "web")], [Port("gt-1", NIC.mac, NIC.ip, ("sg-1",))], {"sg-1": [rule]})
    arrived = travels(plan, NetworkPlan)
    assert arrived.hosts == [(NIC, "web")] and arrived.rules == {"sg-1": [rule]}
    assert arrived.ports == plan.ports
    assert travels([("i-1", HW)], list[tuple[str, Hardware]]) == [("i-1", HW)]
    assert travels(b"\x00\xffhello", bytes) == b"\x00\xffhello"
    assert travels(None, bytes | None) is None
    stats = InstanceStats(1.0, 2.5, 3, None)
    assert travels({"i-1": stats}, dict[str, InstanceStats]) == {"i-1": stats}
    assert travels(ExecResult(1, b"out", b"err", None, True), ExecResult) == ExecResult(
        1, b"out", b"err", None, True
    )


def test_every_remote_method_has_types_that_travel() -> None:
    for method in sorted(REMOTE_METHODS):
        for name, hint in remote_calls.hints(method).items():
            assert "VMEvents" not in str(hint), (method, name)


@pytest.mark.parametrize(
    "raw",
    ["/etc/shadow", "../../etc/shadow", "disks/../../x", "", "a\0b", 7, None, ["disks/x"]],
)
def test_a_path_never_leaves_the_receivers_home(raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        decode(raw, Path, HOME, "path")


def test_a_path_outside_the_senders_root_is_not_sent() -> None:
    with pytest.raises(InvalidInput, match="not under"):
        encode(Path("/etc/shadow"), Path, REMOTE_ROOT)


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (True, int),  # a bool is not a count
        ("5", int),
        (1.5, int),
        (float("nan"), float),
        (1, str),
        ({"id": "n-1"}, Network),  # fields missing
        ({**encode(NET, Network, REMOTE_ROOT), "evil": 1}, Network),  # a field it has not
        ([1, 2, 3], tuple[int, str]),
        ({1: "x"}, dict[str, str]),
        ("not base64!", bytes),
        (list(range(10_001)), list[int]),
    ],
)
def test_values_are_checked_strictly(raw, hint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((InvalidInput, ValueError)):
        decode(raw, hint, HOME)


def test_only_the_methods_that_travel_are_called() -> None:
    call = remote_calls.encode_call(
        "create_disk",
        {"path": REMOTE_ROOT / "disks/a", "backing": REMOTE_ROOT / "images/b", "size_bytes": 1},
        REMOTE_ROOT,
    )
    assert decode_call(call, HOME) == (
        "create_disk",
        {"path": HOME / "disks/a", "backing": HOME / "images/b", "size_bytes": 1},
    )
    for method in ("remove_leftovers", "prepare", "__init__", "start", "remove_scratch", None):
        with pytest.raises(InvalidInput, match="no remote method"):
            decode_call({"op": "call", "method": method, "args": {}}, HOME)
    with pytest.raises(InvalidInput, match="create_disk takes"):
        decode_call({"op": "call", "method": "create_disk", "args": {"shell": "rm"}}, HOME)


def test_a_path_names_a_data_folder_of_the_home_and_no_link_leads_out(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "disks").mkdir(parents=True)
    (home / "agent").mkdir()
    (home / "disks" / "out").symlink_to(tmp_path)  # a link inside the home, leading out
    assert decode("disks/i-1/root.qcow2", Path, home) == home / "disks/i-1/root.qcow2"
    for raw in (".", "./.", "agent/agent.key", "gureum.db", "cluster/ca.key", "disks/out/x"):
        with pytest.raises(InvalidInput):
            decode(raw, Path, home, "path")


def test_the_folders_a_path_may_name_are_the_configurations() -> None:
    from gureum.config import load_config

    cfg = load_config(Path("/nonexistent-home"), env={})
    folders = (cfg.disks_dir, cfg.images_dir, cfg.instances_dir, cfg.project_images_dir,
               cfg.snapshots_dir)  # fmt: skip
    assert {p.relative_to(cfg.home).as_posix() for p in folders} == remote_calls.HOST_FOLDERS


@pytest.mark.parametrize(("raw", "hint"), [(1 << 70, int), (1e400, float), (-(1 << 64), float)])
def test_numbers_stay_within_what_a_host_holds(raw, hint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        decode(raw, hint, HOME)
