"""ExitWatch: a QEMU's death is seen once, and only when its exit status can be collected."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from gureum.engine.qemu.process import ExitWatch
from gureum.sys.procs import proc_state
from tests.waiting import wait_for

# The main thread ends (pthread_exit) while a second thread lives on and then exits the
# process: the leader shows as a zombie ("Z") before the process can be waited for, as a
# many-threaded QEMU's does for a moment after SIGKILL.
LEADER_GOES_FIRST = """
import ctypes, os, threading, time
def last():
    time.sleep(1.5)
    os._exit(3)
threading.Thread(target=last).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_zombie_leader_is_not_taken_for_an_exit_before_its_threads_are_gone():
    async def main() -> tuple[bool, int | None]:
        proc = subprocess.Popen([sys.executable, "-c", LEADER_GOES_FIRST])
        statuses: list[int | None] = []
        watch = ExitWatch(proc.pid, lambda: statuses.append(proc.poll()))
        wait_for(lambda: proc_state(proc.pid) == "Z", 10, interval=0.01, what="leader a zombie")
        watch.check()  # the reconciler's safety net, looking while the second thread runs
        early = bool(statuses)
        assert await watch.wait(10)
        return early, statuses[0] if statuses else None

    early, status = asyncio.run(main())
    assert not early
    assert status == 3


def test_a_process_that_is_gone_fires_once():
    async def main() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        calls: list[int | None] = []
        watch = ExitWatch(proc.pid, lambda: calls.append(proc.poll()))
        assert await watch.wait(10)
        watch.check()
        await asyncio.sleep(0.05)
        assert calls == [0]
        return len(calls)

    assert asyncio.run(main()) == 1
