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
