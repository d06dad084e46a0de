"""The host's side of the pool (``LocalHostAgent``): a waiting QEMU that is discarded gives back
the read grants its user was given on the template's layers, so that starting and ending
waiting QEMUs (every service restart ends them all) never piles ACL entries on those files."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gureum.config import load_config
from gureum.host import permissions
from gureum.host.agent import LocalHostAgent

pytestmark = pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl (acl)")


@dataclass
class _Cfg:
    uid: int
    disk_chain: tuple[Path, ...]


class _WaitingVM:
    def __init__(self, cfg: _Cfg) -> None:
        self.cfg = cfg
        self.killed = False

    async def kill(self) -> None:
        self.killed = True


def test_a_discarded_waiting_qemu_gives_back_its_grants(tmp_path: Path) -> None:
    agent = LocalHostAgent(load_config(tmp_path / "home", env={}))
    top, template_layer = tmp_path / "top.qcow2", tmp_path / "template.qcow2"
    for f in (top, template_layer):
        f.write_bytes(b"")
    uid = 1_500_999_001
    permissions.grant_read([template_layer], uid)
    assert (
        f"user:{uid}:r"
        in subprocess.run(
            ["getfacl", "-n", str(template_layer)], capture_output=True, text=True, check=True
        ).stdout
    )
    vm = _WaitingVM(_Cfg(uid, (top, template_layer)))
    agent._waiting["i-000000000001"] = vm  # type: ignore[assignment]
    asyncio.run(agent.discard_waiting("i-000000000001"))
    acl = subprocess.run(
        ["getfacl", "-n", str(template_layer)], capture_output=True, text=True, check=True
    ).stdout
    assert vm.killed and f"user:{uid}:" not in acl
    assert "i-000000000001" not in agent._waiting


def test_a_waiting_qemu_that_fails_to_start_leaves_no_grant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure at any step of start_waiting (here: its TAP) takes back what was given."""
    from gureum.host.interface import VMSpec
    from gureum.model.hardware import Hardware
    from gureum.network import netns, tap

    config = load_config(tmp_path / "home", env={})
    agent = LocalHostAgent(config)
    agent.prepare()
    snapshot = config.snapshots_dir / "s-000000000001"
    snapshot.mkdir(parents=True)
    (snapshot / "ram-mem0").write_bytes(b"\0" * 4096)
    top, below = config.disks_dir / "l-top.qcow2", config.disks_dir / "l-below.qcow2"
    for f in (top, below):
        f.write_bytes(b"")
    uid = 1_500_999_002

    async def no_tap(*_: object) -> int:
        raise OSError("no TAP for you")

    async def no_namespace(_: str) -> None:
        pass

    monkeypatch.setattr(tap, "open_tap", no_tap)
    monkeypatch.setattr(netns, "create", no_namespace)
    hardware = Hardware(1, 1, 256, 256, "11111111-2222-3333-4444-555555555555",
                        nics=((0, "52:54:00:00:00:01", "n-1"),))  # fmt: skip
    spec = VMSpec("i-000000000002", "pool", hardware, "p-x", uid, None, None, (top, below))
    with pytest.raises(OSError, match="no TAP for you"):  # its own error, not another
        asyncio.run(agent.start_waiting(spec, "s-000000000001", [], None))  # type: ignore[arg-type]
    acl = subprocess.run(["getfacl", "-n", str(below)], capture_output=True, text=True).stdout
    assert f"user:{uid}:" not in acl
    assert not any(agent.sealed_ram._users.values())  # type: ignore[attr-defined]
