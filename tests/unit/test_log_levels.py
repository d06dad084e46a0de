"""What the service log says at which level (issue 11, item 11: normal deletes are not
warnings), against a FakeHost."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tests.unit.test_creation_rollback import build, launch


def test_a_forced_delete_and_a_guest_poweroff_are_no_warnings_a_crash_is(tmp_path: Path, caplog):
    svc, host = build(tmp_path)
    caplog.set_level(logging.INFO, logger="gureum")

    async def run() -> None:
        for name in ("a", "b", "c"):
            await launch(svc, name)
        vm = host.vms[svc.instances.get("a").id]
        vm.events.on_exit("stopped", "stopped")  # what a kill on request reports
        vm = host.vms[svc.instances.get("b").id]
        vm.events.on_exit("stopped", "guest powered off")
        vm = host.vms[svc.instances.get("c").id]
        vm.events.on_exit("crashed", "QEMU exited unexpectedly (killed by signal 9)")

    asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "c (" in warnings[0] and "crashed" in warnings[0], warnings
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("guest powered off" in m for m in said)
    svc.close()
