"""The live event stream (issue 15): instances' state changes, operations and the audit, in the
order they happened, for the console and for `gureum events`.

Every event has a position (``seq``: 1, 2, 3... within one run of the service) and the run's
stream id (``stream``, new at every start). A subscriber that lost its connection asks for what
came after the last position it saw in that stream; it is told when it cannot have it all: the
service restarted (another stream: list again, then follow) or what it missed is older than
the last ``KEEP`` events (a gap). Events live in memory only: the store has the state, the
stream only says what changed.

Each event belongs to one project (``project_id``), or to none (the host's own: images, for
example), and a subscriber sees only the projects it is given (None: all, for an
administrator), exactly as the API scopes everything else. A subscriber that does not keep up
(``QUEUE`` events behind) is ended with an ``overflow`` marker rather than buffered without end:
it resumes from its last position, as after any disconnect.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gureum.ids import new_id
from gureum.model.instance import Instance

KEEP = 10_000  # events kept for subscribers that resume
QUEUE = 1_000  # events one subscriber may fall behind before it is ended


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    kind: str  # "instance", "operation", "audit"
    project_id: str | None
    data: dict[str, Any]

    def to_dict(self, stream: str) -> dict[str, Any]:
        return {
            "stream": stream,
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "project_id": self.project_id,
            **self.data,
        }


@dataclass(eq=False)  # each one is itself: kept in a set by identity
class Subscription:
    """One subscriber: its projects (None: every one; a None among them: the host's own
    events too) and its queue of events to send. A ``None`` in the queue is the end: the
    subscriber fell behind (``overflowed``)."""

    projects: frozenset[str | None] | None
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(QUEUE + 1))
    overflowed: bool = False

    def sees(self, event: Event) -> bool:
        return self.projects is None or event.project_id in self.projects


@dataclass(frozen=True)
class Resumed:
    """Where a subscriber starts: the events it missed (all it asked for, unless ``gap``)."""

    missed: list[Event]
    gap: bool  # some of what it missed is gone (older than KEEP, or another stream)


def publish_state(events: EventBus, inst: Instance, change: str = "state") -> None:
    """An instance's state as it is now, to its project's stream (``change``: "state", or
    "created" and "deleted" from the one creation path)."""
    events.publish(
        "instance", inst.project_id, change=change, instance_id=inst.id, name=inst.name,
        type=inst.kind, state=inst.state.value, reason=inst.state_reason,
    )  # fmt: skip


class EventBus:
    def __init__(self) -> None:
        self.stream = new_id("es-")
        self._seq = 0
        self._kept: collections.deque[Event] = collections.deque(maxlen=KEEP)
        self._subscribers: set[Subscription] = set()

    @property
    def position(self) -> int:
        return self._seq

    def publish(self, kind: str, project_id: str | None, **data: Any) -> Event:
        """Record an event and hand it to every subscriber that sees its project. Never blocks
        and never fails the caller: a subscriber that is too far behind is ended instead."""
        self._seq += 1
        event = Event(self._seq, time.time(), kind, project_id, data)
        self._kept.append(event)
        for sub in list(self._subscribers):
            if not sub.sees(event):
                continue
            if sub.queue.qsize() >= QUEUE:
                self._end(sub)
                continue
            sub.queue.put_nowait(event)
        return event

    def subscribe(
        self,
        projects: Iterable[str | None] | None,
        *,
        stream: str | None = None,
        after: int | None = None,
    ) -> tuple[Subscription, Resumed]:
        """A new subscriber of ``projects`` (None: all), and what it missed since position
        ``after`` of ``stream`` (nothing asked: it starts from now)."""
        sub = Subscription(None if projects is None else frozenset(projects))
        missed: list[Event] = []
        gap = False
        if after is not None:
            if stream != self.stream:
                gap = True  # another run of the service: its positions mean nothing here
            else:
                gap = bool(self._kept) and after + 1 < self._kept[0].seq
                missed = [e for e in self._kept if e.seq > after and sub.sees(e)]
        self._subscribers.add(sub)
        return sub, Resumed(missed, gap)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def _end(self, sub: Subscription) -> None:
        sub.overflowed = True
        self._subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
