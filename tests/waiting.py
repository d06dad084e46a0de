"""Waiting in tests: for a condition, with a deadline; never a sleep of a guessed length.

``wait_for(condition, timeout)`` calls ``condition`` until it returns something true and returns
that, or fails the test when ``timeout`` seconds pass first, saying what was awaited and the last
value seen. ``wait_for_async`` is the same inside an event loop (the loop runs between tries).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _failed(what: str | None, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"{what or 'condition'}: not so after {timeout:g} s (last: {last!r})")


def wait_for(
    condition: Callable[[], T], timeout: float, *, interval: float = 0.1, what: str | None = None
) -> T:
    """The first true value ``condition()`` returns; tried once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failed(what, timeout, value)
        time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], T], timeout: float, *, interval: float = 0.02, what: str | None = None
) -> T:
    """``wait_for`` in a coroutine: the event loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failed(what, timeout, value)
        await asyncio.sleep(interval)
