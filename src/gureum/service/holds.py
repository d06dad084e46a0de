"""Allocations admitted but not in the store yet.

A check reads what the store shows; some allocations reach the store only when their operation
ends (a snapshot's row, a resize's new size). Until then they are held here, per key (a
project, the host), and checks add them in, so two admissions can never both take the last of
something.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class Holds:
    def __init__(self) -> None:
        self._held: dict[str, Counter[str]] = {}

    def of(self, key: str) -> Counter[str]:
        """What is held under ``key`` (amounts by name; 0 for any not held)."""
        return self._held.get(key, Counter())

    def hold(self, key: str, **amounts: int) -> Callable[[], None]:
        """Hold ``amounts`` under ``key`` until the returned release is called (twice is
        harmless). Take it under the lock of the check it follows."""
        held = self._held.setdefault(key, Counter())
        held.update(amounts)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                held.subtract(amounts)

        return release
