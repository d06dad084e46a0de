"""Uploads and downloads under way (backup archives, image files): bounded, because each holds
a thread, a scratch folder and a connection for as long as its client takes."""

from __future__ import annotations

from collections.abc import Callable

from gureum.errors import RateLimited

# Transfers under way at once: each holds a thread, a scratch folder and a connection
# for as long as its client takes to send or read. On the host, and per project.
MAX_TRANSFERS = 8
MAX_TRANSFERS_PER_PROJECT = 2
# An upload must bring at least UPLOAD_MIN_BYTES every UPLOAD_IDLE_S seconds (a trickle of a
# byte a minute would hold its slot forever), and nothing for that long ends it at once.
UPLOAD_IDLE_S = 60.0
UPLOAD_MIN_BYTES = 1 << 20


class Transfers:
    """Counts transfers under way; ``take`` refuses one past the limits (429)."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}

    def take(self, project_id: str) -> Callable[[], None]:
        total, mine = sum(self._active.values()), self._active.get(project_id, 0)
        if total >= MAX_TRANSFERS or mine >= MAX_TRANSFERS_PER_PROJECT:
            raise RateLimited(
                f"too many transfers (backups, image imports) under way ({mine} of this project's"
                f" {MAX_TRANSFERS_PER_PROJECT}, {total} of the host's {MAX_TRANSFERS}):"
                " try again when one ends",
                retry_after=10,
            )
        self._active[project_id] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._active[project_id] -= 1

        return release
