"""Streams between the event loop and a thread of their own (``sys/streams.py``): whichever
side stops first stops the other at once, and no shared pool thread is ever held."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gureum.errors import RateLimited, Stalled
from gureum.service.transfers import MAX_TRANSFERS, Transfers
from gureum.sys import streams
from tests.waiting import wait_for_async


async def stalls_after(*chunks: bytes):
    """A request body whose client sends ``chunks`` and then nothing, forever."""
    for chunk in chunks:
        yield chunk
    await asyncio.Event().wait()


def test_a_consumer_that_fails_ends_the_request_without_the_rest_of_the_body():
    def consume(f) -> None:
        f.read(10)
        raise ValueError("bad first member")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="bad first member"):
            await asyncio.wait_for(
                streams.consume_in_thread(stalls_after(b"x" * 100), consume, name="t"), 5
            )

    asyncio.run(scenario())


def test_a_consumer_gets_the_whole_body_in_order():
    body = [bytes([i]) * 70_000 for i in range(40)]  # more than the queue holds

    async def gen():
        for chunk in body:
            yield chunk

    result = asyncio.run(streams.consume_in_thread(gen(), lambda f: f.read(), name="t"))
    assert result == b"".join(body)


def test_a_client_gone_mid_export_stops_the_producer():
    stopped = threading.Event()

    def produce(out) -> None:
        try:
            while True:
                out.write(b"y" * 65536)
        except BrokenPipeError:
            stopped.set()
            raise

    async def scenario() -> None:
        stream = streams.produce_in_thread(produce, name="t")
        assert await anext(stream)
        await stream.aclose()  # the client went away

    asyncio.run(scenario())
    assert stopped.wait(5)


def test_no_pool_thread_is_held_by_stalled_streams():
    """Twenty stalled imports at once, and asyncio's shared pool still runs work at once."""

    async def scenario() -> None:
        stalled = [
            asyncio.ensure_future(
                streams.consume_in_thread(stalls_after(b"z"), lambda f: f.read(), name="stalled")
            )
            for _ in range(20)
        ]
        await wait_for_async(
            lambda: sum(t.name == "stalled" for t in threading.enumerate()) >= 20, 5,
            what="twenty stalled consumers on their threads",
        )  # fmt: skip
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 2) == 42
        for task in stalled:
            task.cancel()

    asyncio.run(scenario())


def test_an_upload_that_stops_sending_is_given_up():
    async def scenario() -> None:
        with pytest.raises(Stalled, match=r"nothing arrived for 0\.3 s"):
            await streams.consume_in_thread(
                stalls_after(b"a"), lambda f: f.read(), name="t", idle_timeout=0.3
            )

    asyncio.run(scenario())


def test_backup_transfers_are_bounded_per_project_and_on_the_host():
    transfers = Transfers()
    first = transfers.take("p-a")
    transfers.take("p-a")
    with pytest.raises(RateLimited, match="this project"):
        transfers.take("p-a")
    first()
    first()  # a release counts once
    transfers.take("p-a")
    for i in range(MAX_TRANSFERS - 2):
        transfers.take(f"p-{i}")
    with pytest.raises(RateLimited, match="host"):
        transfers.take("p-other")


def test_an_upload_that_trickles_is_given_up():
    async def trickle():
        while True:
            yield b"x"
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        with pytest.raises(Stalled, match="too slow"):
            await streams.consume_in_thread(
                trickle(), lambda f: f.read(), name="t", idle_timeout=0.3, min_bytes=100
            )

    asyncio.run(scenario())
