"""The metadata endpoint under a guest's flood (issue 9, #4), on loopback: half-open
connections are bounded per source and per network, closed after the head timeout, and
another guest is still answered meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from gureum.errors import Unavailable
from gureum.ids import ec2_id
from gureum.network import metadata
from gureum.network.metadata import Caller, MetadataServer, Tokens
from tests.waiting import wait_for_async


async def lookup(network_id: str, ip: str) -> Caller | None:
    if not ip.startswith("127.0.0."):
        return None
    return Caller(f"i-{ip.rsplit('.', 1)[1]}", "vm", ip, "52:54:00:00:00:01", (), None)


async def get(port: int, source: str, path: str = "/latest/meta-data/instance-id") -> bytes:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(metadata, "HEAD_TIMEOUT_S", 0.5)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serving(who=lookup, tokens_required: bool = False):
    """A metadata server on a loopback port: (server, port)."""
    sock = listening()
    server = MetadataServer("n-1", who, Tokens(), lambda: tokens_required)
    await server.start(sock)
    try:
        yield server, sock.getsockname()[1]
    finally:
        await server.stop()


def counting(lookups: list[str]):
    """The test lookup, noting each address it is asked about."""

    async def ask(network_id: str, ip: str) -> Caller | None:
        lookups.append(ip)
        return await lookup(network_id, ip)

    return ask


def test_a_flood_of_half_open_connections_is_bounded(monkeypatch):
    # The head timeout must outlast opening the whole flood: at 0.5 s, a busy CI host was still
    # opening it when the first ones timed out, and the later ones took their freed places
    # instead of being refused (the count never reached 200 - PER_SOURCE).
    monkeypatch.setattr(metadata, "HEAD_TIMEOUT_S", 5.0)

    async def scenario() -> None:
        flood = []
        async with serving() as (server, port):
            for _ in range(200):  # partial heads, never completed
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x")
                flood.append(w)
            await wait_for_async(lambda: server.refused >= 200 - metadata.PER_SOURCE, 5,
                                 what="the flood past the bound refused")  # fmt: skip
            assert server.open_connections() <= metadata.PER_SOURCE
            # Another guest (another source address) is answered while the flood holds.
            assert (await get(port, "127.0.0.2")).endswith(
                b"\r\n\r\n" + ec2_id("i", "i-2").encode()
            )
            # Past the head timeout (5 s) the half-open ones are gone.
            await wait_for_async(lambda: server.open_connections() == 0, 15,
                                 what="the half-open connections closed")  # fmt: skip
            assert (await get(port, "127.0.0.1")).startswith(b"HTTP/1.1 200")
        for w in flood:
            w.close()

    asyncio.run(scenario())


def test_bad_heads_and_methods(quick):
    async def scenario() -> None:
        async with serving(tokens_required=True) as (_, port):
            assert (await get(port, "127.0.0.3")).startswith(b"HTTP/1.1 401")  # tokens required
            huge = "/" + "a" * (2 * metadata.MAX_HEAD)
            assert (await get(port, "127.0.0.3", huge)).startswith(b"HTTP/1.1 400")
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60"
                    b"\r\n\r\n")  # fmt: skip
            token = (await asyncio.wait_for(r.read(), 5)).split(b"\r\n\r\n", 1)[1].decode()
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET /latest/meta-data/instance-id HTTP/1.1\r\n"
                    f"X-aws-ec2-metadata-token: {token}\r\n\r\n".encode())  # fmt: skip
            assert (await asyncio.wait_for(r.read(), 5)).endswith(ec2_id("i", "i-1").encode())
            w.close()

    asyncio.run(scenario())


def test_a_guest_is_rate_limited_and_its_lookups_cached(quick, monkeypatch):
    monkeypatch.setattr(metadata, "LOOKUP_TTL_S", 60.0)  # a busy host must not outlast the cache
    monkeypatch.setattr(metadata, "RATE_BURST", 5.0)
    monkeypatch.setattr(metadata, "RATE_PER_S", 1.0)
    lookups: list[str] = []

    async def scenario() -> None:
        async with serving(counting(lookups)) as (_, port):
            answers = [await get(port, "127.0.0.4") for _ in range(8)]
            assert [a.split(b" ", 2)[1] for a in answers] == [b"200"] * 5 + [b"429"] * 3
            assert lookups == ["127.0.0.4"]  # one lookup for all five answers
            assert (await get(port, "127.0.0.5")).startswith(b"HTTP/1.1 200")  # its own bucket

    asyncio.run(scenario())


def test_the_owner_of_an_address_is_asked_again_when_nics_change(quick, monkeypatch):
    # At the real 1 s, two requests on a loaded CI host were once more than a second apart, and
    # the second one looked the owner up again: the cache is only meant to be dropped on demand.
    monkeypatch.setattr(metadata, "LOOKUP_TTL_S", 60.0)
    lookups: list[str] = []

    async def scenario() -> None:
        async with serving(counting(lookups)) as (server, port):
            await get(port, "127.0.0.6")
            await get(port, "127.0.0.6")
            assert len(lookups) == 1
            server.forget_callers()  # a VM deleted, its address given to another
            await get(port, "127.0.0.6")
            assert len(lookups) == 2

    asyncio.run(scenario())


def test_a_guests_connections_at_once_cost_one_lookup(quick):
    """A joined host's lookup is a question to the control plane: a guest's 8 connections
    waiting together ask it once, and all 8 are answered from that one answer."""
    asked: list[str] = []
    release = asyncio.Event()

    async def slow(network_id: str, ip: str) -> Caller | None:
        asked.append(ip)
        await release.wait()
        return await lookup(network_id, ip)

    async def scenario() -> None:
        async with serving(slow) as (_, port):
            waiting = [asyncio.ensure_future(get(port, "127.0.0.7")) for _ in range(8)]
            await wait_for_async(lambda: len(asked) == 1, 5)
            await asyncio.sleep(0.1)  # all 8 heads are in by now, and wait on that one
            release.set()
            answers = await asyncio.gather(*waiting)
            assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
            assert asked == ["127.0.0.7"]

    asyncio.run(scenario())


def test_a_lookup_that_could_not_say_is_503_and_asked_again(quick):
    """A joined host whose control plane did not answer: 503, and not remembered as nobody
    (a 403 for the next second)."""
    calls: list[str] = []

    async def flaky(network_id: str, ip: str) -> Caller | None:
        calls.append(ip)
        if len(calls) == 1:
            raise Unavailable("the control plane did not say")
        return await lookup(network_id, ip)

    async def scenario() -> None:
        async with serving(flaky) as (_, port):
            assert (await get(port, "127.0.0.8")).startswith(b"HTTP/1.1 503 Service Unavailable")
            assert (await get(port, "127.0.0.8")).startswith(b"HTTP/1.1 200")
            assert len(calls) == 2

    asyncio.run(scenario())
