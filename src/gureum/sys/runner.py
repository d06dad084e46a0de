"""The only place gureum runs host commands.

Commands are argv lists, never shell strings, so a user-supplied name can never become shell
syntax. Failures raise EngineError carrying the command's own stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from gureum.errors import EngineError

log = logging.getLogger(__name__)


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _check(argv: list[str], returncode: int, stdout: str, stderr: str, check: bool) -> Result:
    if check and returncode != 0:
        detail = (stderr or stdout).strip().splitlines()[-5:]
        raise EngineError(f"{argv[0]} failed (exit {returncode}): {' / '.join(detail)}")
    return Result(argv, returncode, stdout, stderr)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 600,
    input: str | None = None,
    cwd: str | None = None,
) -> Result:
    argv = [str(a) for a in argv]
    log.debug("run %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]} is not installed (run `make setup`)") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{argv[0]} did not finish within {timeout} s") from exc
    return _check(argv, proc.returncode, proc.stdout, proc.stderr, check)


async def arun(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 600,
    input: str | None = None,
) -> Result:
    argv = [str(a) for a in argv]
    log.debug("run %s", shlex.join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]} is not installed (run `make setup`)") from exc
    try:
        data = input.encode() if input is not None else None
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise EngineError(f"{argv[0]} did not finish within {timeout} s") from exc
    except asyncio.CancelledError:
        # Whoever waited is gone (a client hung up, the service stops): the work goes too.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    return _check(
        argv,
        proc.returncode or 0,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        check,
    )
