"""The event stream's rules (service/events.py): order, projects, resumption, slow subscribers."""

from __future__ import annotations

import asyncio

from gureum.service import events
from gureum.service.events import EventBus


def drain(sub: events.Subscription) -> list[events.Event | None]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def test_a_subscriber_sees_its_projects_events_in_order_and_no_others():
    bus = EventBus()
    mine, _ = bus.subscribe({"p-a"})
    admin, _ = bus.subscribe(None)
    bus.publish("instance", "p-a", name="web1", state="running")
    bus.publish("instance", "p-b", name="other", state="running")
    bus.publish("image", None, name="tiny")  # the host's own: administrators only
    bus.publish("instance", "p-a", name="web1", state="stopped")
    got = drain(mine)
    assert [e.data["state"] for e in got if e] == ["running", "stopped"]
    assert [e.seq for e in got if e] == [1, 4]
    assert [e.seq for e in drain(admin) if e] == [1, 2, 3, 4]


def test_a_subscriber_resumes_after_its_last_position():
    bus = EventBus()
    for i in range(5):
        bus.publish("instance", "p-a" if i % 2 == 0 else "p-b", n=i)
    sub, resumed = bus.subscribe({"p-a"}, stream=bus.stream, after=1)
    assert [e.data["n"] for e in resumed.missed] == [2, 4] and not resumed.gap
    bus.publish("instance", "p-a", n=5)
    assert [e.data["n"] for e in drain(sub) if e] == [5]  # then the new ones, once each
    # From now (no position): nothing missed.
    _, fresh = bus.subscribe({"p-a"})
    assert fresh.missed == [] and not fresh.gap


def test_a_position_of_another_stream_or_too_old_is_a_gap():
    bus = EventBus()
    bus.publish("instance", "p-a", n=0)
    _, elsewhere = bus.subscribe({"p-a"}, stream="es-another-run", after=0)
    assert elsewhere.gap and elsewhere.missed == []  # the service restarted: list again
    for i in range(events.KEEP + 5):
        bus.publish("instance", "p-a", n=i)
    _, old = bus.subscribe({"p-a"}, stream=bus.stream, after=1)
    assert old.gap and len(old.missed) == events.KEEP
    _, recent = bus.subscribe({"p-a"}, stream=bus.stream, after=bus.position - 2)
    assert not recent.gap and len(recent.missed) == 2


def test_a_subscriber_that_falls_behind_is_ended_not_buffered():
    bus = EventBus()
    slow, _ = bus.subscribe({"p-a"})
    for i in range(events.QUEUE + 10):
        bus.publish("instance", "p-a", n=i)
    assert slow.overflowed and bus.subscribers == 0
    assert drain(slow) == [None]  # its queue emptied, and the end marked
    # Publishing goes on for the others, unhindered.
    other, _ = bus.subscribe({"p-a"})
    bus.publish("instance", "p-a", n=-1)
    assert [e.data["n"] for e in drain(other) if e] == [-1]


def test_a_subscriber_waits_on_its_queue():
    bus = EventBus()

    async def run() -> list[int]:
        sub, _ = bus.subscribe(None)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, lambda: bus.publish("audit", "p-a", action="x"))
        event = await asyncio.wait_for(sub.queue.get(), 1)
        assert event is not None
        bus.unsubscribe(sub)
        return [event.seq]

    assert asyncio.run(run()) == [1]
