"""runc, driven for gureum's containers only.

runc keeps its state under ``--root``: gureum gives it a folder of its own, so that it never
sees, lists or touches containers anyone else runs with runc on the host.

A container starts in two steps, ``create`` then ``start``: between them its init exists, in
its namespaces and control group, but has not run the image's init yet, which is when the host
makes its control group folders the container's own (systemd inside needs to write there).

Commands run in a container (``exec``) are given to runc as a process file, never on its
command line: an argument such as ``--help`` or ``-c`` is the program's, not runc's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gureum.engine.container.bundle import ENV
from gureum.engine.qemu.agent import ExecResult
from gureum.errors import CommandNotFound, EngineError, InvalidState
from gureum.sys.runner import arun

# Output kept per stream of one exec, as qemu-ga keeps for a VM; the rest is dropped.
OUTPUT_LIMIT = 16 * 2**20
STATE_TIMEOUT_S = 30.0
# What runc says of a program it cannot start (missing, or not executable): the user's input.
NOT_STARTABLE = ("executable file not found", "no such file or directory", "permission denied")


@dataclass(frozen=True)
class Runc:
    root: Path  # runc's state folder for this home's containers

    def _argv(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.root), *args]

    async def create(self, container_id: str, bundle: Path, console_log: Path) -> int:
        """Create the container from ``bundle`` (its config.json); its init's host pid. The
        init's output goes to ``console_log`` (appended), its input is /dev/null."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid_file, runc_log = bundle / "init.pid", bundle / "runc.log"
        for stale in (pid_file, runc_log):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        # The init inherits runc's stdio: all of it goes to the console log (a pipe would be
        # held open by the container for its whole life); runc's own errors go to its log.
        argv = self._argv(
            "--log", str(runc_log), "--log-format", "json",
            "create", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id,
        )  # fmt: skip
        # 0600: what the container prints is its own, not every host user's to read.
        fd = os.open(console_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd
            )
        finally:
            os.close(fd)
        try:
            await asyncio.wait_for(proc.wait(), STATE_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EngineError(
                f"runc did not create the container within {STATE_TIMEOUT_S:g} s"
            ) from None
        if proc.returncode != 0:
            raise EngineError(f"runc could not create the container: {_logged(runc_log)}")
        return int(pid_file.read_text().strip())

    async def start(self, container_id: str) -> None:
        await arun(self._argv("start", container_id), timeout=STATE_TIMEOUT_S)

    async def state(self, container_id: str) -> dict[str, object] | None:
        """runc's view (``status``: created, running, paused, stopped), None if it has none."""
        res = await arun(self._argv("state", container_id), check=False, timeout=STATE_TIMEOUT_S)
        if res.returncode != 0:
            return None
        state = json.loads(res.stdout)
        return state if isinstance(state, dict) else None

    async def kill(self, container_id: str, signal: str = "KILL") -> None:
        await arun(self._argv("kill", container_id, signal), check=False, timeout=STATE_TIMEOUT_S)

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container (the cgroup freezer)."""
        await arun(self._argv("pause", container_id), timeout=STATE_TIMEOUT_S)

    async def resume(self, container_id: str) -> None:
        await arun(self._argv("resume", container_id), timeout=STATE_TIMEOUT_S)

    async def update(self, container_id: str, resources: dict[str, object]) -> None:
        """Change its limits while it runs (``resources``: as in its config)."""
        await arun(
            self._argv("update", "--resources", "-", container_id),
            input=json.dumps(resources),
            timeout=STATE_TIMEOUT_S,
        )

    async def delete(self, container_id: str) -> None:
        """Forget the container (killing what is left of it); a no-op if runc has none."""
        await arun(
            self._argv("delete", "--force", container_id), check=False, timeout=STATE_TIMEOUT_S
        )

    async def exec(
        self, container_id: str, argv: list[str], stdin: bytes | None, timeout: float
    ) -> ExecResult:
        """Run ``argv`` as root in the container, wait for it, and return its exit code and its
        output (at most OUTPUT_LIMIT bytes of each stream)."""
        if not argv:
            raise InvalidState("nothing to run")
        process = {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": list(ENV),
            "cwd": "/",
            "noNewPrivileges": True,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:  # 0600
            json.dump(process, f)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv("exec", "--process", f.name, container_id),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                out, err, cut = await asyncio.wait_for(_talk(proc, stdin), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise InvalidState(f"the command did not finish within {timeout:g} s") from None
        finally:
            os.unlink(f.name)
        code = proc.returncode or 0
        if code < 0:  # runc itself died of a signal
            raise EngineError(f"runc exec ended by signal {-code}")
        if code == 255 and b"level=error" in err:  # runc's own failure, not the program's
            said = _said(err)
            if any(why in said for why in NOT_STARTABLE):
                raise CommandNotFound(f"the container cannot start it: {said}")
            raise InvalidState(f"cannot run that in the container: {said}")
        return ExecResult(code, out, err, truncated=cut)


async def _talk(proc: asyncio.subprocess.Process, stdin: bytes | None) -> tuple[bytes, bytes, bool]:
    """Feed stdin, read both streams to their end keeping at most OUTPUT_LIMIT of each."""
    cut = False

    async def read(stream: asyncio.StreamReader | None) -> bytes:
        nonlocal cut
        kept = bytearray()
        while stream is not None and (chunk := await stream.read(65536)):
            room = OUTPUT_LIMIT - len(kept)
            if len(chunk) > room:
                cut = True
            kept += chunk[: max(room, 0)]
        return bytes(kept)

    async def feed() -> None:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if stdin:
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
            proc.stdin.close()

    _, out, err = await asyncio.gather(feed(), read(proc.stdout), read(proc.stderr))
    await proc.wait()
    return out, err, cut


def _logged(runc_log: Path) -> str:
    """The last error runc wrote to its JSON log, bounded."""
    try:
        lines = runc_log.read_text(errors="replace").splitlines()
    except OSError:
        return "no reason given"
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") == "error":
                return str(entry.get("msg", ""))[:300]
    return "no reason given"


def _said(err: bytes) -> str:
    """runc's last error line (its msg="..." part, where it has one), bounded."""
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else "no reason given"
    if (found := re.search(r'msg="(.*)"\s*$', last)) is not None:
        last = found.group(1).replace('\\"', '"')
    return last[:300]
