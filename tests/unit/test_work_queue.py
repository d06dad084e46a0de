"""Work queued for hosts in the store (issue 17, part 2), on SQLite and on a real PostgreSQL:
claims are exclusive, a dead worker's claim expires and another finishes the work, one
instance's work is never done by two workers at once (two workers racing, threads on their own
connections), and a late finish by a worker whose lease ran out is not recorded."""

from __future__ import annotations

import threading
import time

import pytest

from gureum.store.db import Database
from gureum.store.work import CLAIMED, DONE, QUEUED, WorkQueue


@pytest.fixture
def queue(db: Database) -> WorkQueue:
    db.migrate()
    return WorkQueue(db)


def test_claims_are_oldest_first_and_exclusive(queue: WorkQueue) -> None:
    first = queue.enqueue("h1", "start", {"n": 1}, "i-1")
    second = queue.enqueue("h1", "start", {"n": 2}, "i-2")
    queue.enqueue("h2", "start", {"n": 3}, "i-3")
    a = queue.claim("h1", "cp-a", 30)
    b = queue.claim("h1", "cp-b", 30)
    assert (a.id, a.owner, a.state, a.attempts, a.payload) == (first, "cp-a", CLAIMED, 1, {"n": 1})
    assert (b.id, b.owner) == (second, "cp-b")
    assert queue.claim("h1", "cp-c", 30) is None  # all held; h2's is h2's
    assert queue.finish(a.id, "cp-a", {"ok": True})
    done = queue.get(a.id)
    assert (done.state, done.result, done.lease_until) == (DONE, {"ok": True}, None)


def test_a_dead_workers_claim_expires_and_another_finishes_the_work(queue: WorkQueue) -> None:
    item = queue.enqueue("h1", "launch", {}, "i-1")
    now = time.time()
    assert queue.claim("h1", "cp-a", 10, now=now).id == item  # then cp-a dies
    assert queue.claim("h1", "cp-b", 10, now=now + 5) is None  # its lease still runs
    taken = queue.claim("h1", "cp-b", 10, now=now + 11)
    assert (taken.id, taken.owner, taken.attempts) == (item, "cp-b", 2)
    # cp-a comes back too late: its result is not recorded; cp-b's is.
    assert not queue.finish(item, "cp-a", {"by": "a"})
    assert queue.finish(item, "cp-b", {"by": "b"})
    assert queue.get(item).result == {"by": "b"}


def test_a_renewed_lease_keeps_the_claim(queue: WorkQueue) -> None:
    item = queue.enqueue("h1", "migrate", {}, "i-1")
    now = time.time()
    queue.claim("h1", "cp-a", 10, now=now)
    assert queue.renew("cp-a", 10, now=now + 8) == 1
    assert queue.claim("h1", "cp-b", 10, now=now + 15) is None  # renewed until now + 18
    assert queue.claim("h1", "cp-b", 10, now=now + 19).id == item
    assert queue.renew("cp-a", 10, now=now + 20) == 0  # too late: it is cp-b's now


def test_one_instances_work_waits_for_the_worker_that_holds_the_instance(queue: WorkQueue) -> None:
    stop = queue.enqueue("h1", "stop", {}, "i-1")
    start = queue.enqueue("h1", "start", {}, "i-1")
    other = queue.enqueue("h1", "start", {}, "i-2")
    assert queue.claim("h1", "cp-a", 30).id == stop
    assert queue.claim("h1", "cp-b", 30).id == other  # i-1 is cp-a's: its start is passed over
    assert queue.get(start).state == QUEUED and queue.get(start).attempts == 0
    assert queue.claim("h1", "cp-a", 30).id == start  # the holder may take the next one
    queue.finish(stop, "cp-a", {})
    queue.finish(start, "cp-a", {})
    later = queue.enqueue("h1", "stop", {}, "i-1")
    assert queue.claim("h1", "cp-b", 30).id == later  # i-1's lease went with cp-a's last item


def test_two_workers_never_act_on_one_instance_at_once(queue: WorkQueue) -> None:
    """Two control planes drain a queue of 60 items on 4 instances concurrently; each notes
    when it acts on an instance. No two notes of one instance overlap, and every item is done
    once."""
    for n in range(60):
        queue.enqueue("h1", "touch", {"n": n}, f"i-{n % 4}")
    acting: dict[str, str | None] = {f"i-{k}": None for k in range(4)}
    overlaps: list[str] = []
    done: list[int] = []
    guard = threading.Lock()

    def worker(owner: str) -> None:
        while True:
            item = queue.claim("h1", owner, 30)
            if item is None:
                if not [i for i in queue.list("h1") if i.state != DONE]:
                    return
                time.sleep(0.005)
                continue
            with guard:
                if acting[item.instance_id] not in (None, owner):
                    overlaps.append(f"{item.instance_id}: {acting[item.instance_id]} and {owner}")
                acting[item.instance_id] = owner
            time.sleep(0.002)  # the work
            with guard:  # each worker holds one item at a time: it is done with the instance
                acting[item.instance_id] = None
                done.append(item.payload["n"])
            assert queue.finish(item.id, owner, {})

    threads = [threading.Thread(target=worker, args=(f"cp-{k}",)) for k in "ab"]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert overlaps == []
    assert sorted(done) == list(range(60))
