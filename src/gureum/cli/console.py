"""The interactive serial console: a raw terminal joined to the VM over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty

from websockets.exceptions import ConnectionClosed

from gureum.client.client import Endpoint, connect_console, refusal

DETACH = b"\x1d"  # Ctrl-]
IDLE_EXIT_S = 1.0  # non-interactive mode: exit once the console is quiet this long


def run_console(ref: str) -> int:
    return asyncio.run(_console(ref, Endpoint.from_env()))


async def _console(ref: str, endpoint: Endpoint) -> int:
    ws = await connect_console(endpoint, ref)
    interactive = sys.stdin.isatty()
    stdin_fd = sys.stdin.fileno()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    failed = 0
    saved = termios.tcgetattr(stdin_fd) if interactive else None
    last_output = loop.time()
    background: set[asyncio.Future[object]] = set()

    def spawn(coro) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    async def receive() -> None:
        nonlocal failed, last_output
        try:
            async for message in ws:
                if isinstance(message, str):  # the only text frame is an error
                    sys.stderr.write(f"error: {refusal(message)}\n")
                    failed = 1
                    break
                os.write(sys.stdout.fileno(), message)
                last_output = loop.time()
        except ConnectionClosed:
            pass
        done.set()

    def on_stdin() -> None:
        data = os.read(stdin_fd, 4096)
        if not data:
            loop.remove_reader(stdin_fd)
            if not interactive:
                spawn(_linger())
            return
        if interactive and DETACH in data:
            data = data.split(DETACH)[0]
            if data:
                spawn(ws.send(data))
            done.set()
            return
        spawn(ws.send(data))

    async def _linger() -> None:
        # Piped input is all sent: keep printing until the guest has been quiet a moment.
        while not done.is_set():
            await asyncio.sleep(0.1)
            if loop.time() - last_output > IDLE_EXIT_S:
                done.set()

    if interactive:
        sys.stderr.write(
            f"Connected to {ref}'s serial console. Detach with Ctrl-]. "
            "Press Enter for a prompt.\r\n"
        )
        tty.setraw(stdin_fd)
    receiver = asyncio.create_task(receive())
    try:
        loop.add_reader(stdin_fd, on_stdin)
    except PermissionError:
        # A regular file or /dev/null cannot be watched: send it whole, then linger.
        data = sys.stdin.buffer.read()
        if data:
            await ws.send(data)
        spawn(_linger())
    try:
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(stdin_fd)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            sys.stderr.write("\r\nDetached.\n")
        receiver.cancel()
        with contextlib.suppress(BaseException):
            await ws.close()
    return failed
