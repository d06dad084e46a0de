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


class _Deadline:
    """One wait's deadline: ``met(value)`` says whether a try's value is the awaited one, and
    fails the test once the deadline has passed without it."""

    def __init__(self, timeout: float, what: str | None) -> None:
        self.timeout, self.what = timeout, what
        self.at = time.monotonic() + timeout

    def met(self, value: object) -> bool:
        if value:
            return True
        if time.monotonic() >= self.at:
            raise AssertionError(
                f"{self.what or 'condition'}: not so after {self.timeout:g} s (last: {value!r})"
            )
        return False


def wait_for(
    condition: Callable[[], T], timeout: float, *, interval: float = 0.1, what: str | None = None
) -> T:
    """The first true value ``condition()`` returns; tried once more at the deadline."""
    deadline = _Deadline(timeout, what)
    while not deadline.met(value := condition()):
        time.sleep(interval)
    return value


async def wait_for_async(
    condition: Callable[[], T], timeout: float, *, interval: float = 0.02, what: str | None = None
) -> T:
    """``wait_for`` in a coroutine: the event loop runs while it waits."""
    deadline = _Deadline(timeout, what)
    while not deadline.met(value := condition()):
        await asyncio.sleep(interval)
    return value
