"""Long-lived work under way, bounded: uploads and downloads (backup archives, image files) hold
a thread, a scratch folder and a connection for as long as their client takes; SSH tunnels two
descriptors each for as long as both ends keep them open."""

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


class Slots:
    """Counts long-lived things under way (transfers, tunnels), on the host and per project;
    ``take`` refuses one past either bound (429) and returns its release."""

    def __init__(self, what: str, total: int, per_project: int) -> None:
        self.what, self.total, self.per_project = what, total, per_project
        self._active: dict[str, int] = {}

    def take(self, project_id: str) -> Callable[[], None]:
        total, mine = sum(self._active.values()), self._active.get(project_id, 0)
        if total >= self.total or mine >= self.per_project:
            raise RateLimited(
                f"too many {self.what} under way ({mine} of this project's"
                f" {self.per_project}, {total} of the host's {self.total}):"
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


class Transfers(Slots):
    """Backups and image imports together."""

    def __init__(self) -> None:
        super().__init__(
            "transfers (backups, image imports)", MAX_TRANSFERS, MAX_TRANSFERS_PER_PROJECT
        )
