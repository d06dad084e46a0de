"""The cluster's wire under a hostile peer (issue 17): whoever can reach a port can hold at most
a few connections, only until a short deadline, whether or not it ever starts TLS; a request
nested past reason or carrying NaN is refused with an answer, not a traceback; a server that
trickles its answer, or answers with a bomb, costs a caller its deadline and nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path

import pytest

from gureum.errors import InvalidInput, Unavailable
from gureum.service.cluster_ca import ClusterCA
from gureum.sys import jsonline
from gureum.sys.jsonline import LineServer, tls_context


@pytest.fixture
def ca(tmp_path: Path) -> ClusterCA:
    made = ClusterCA(tmp_path / "cluster")
    made.ensure()
    return made


def server_ctx(ca: ClusterCA) -> ssl.SSLContext:
    cert, key = ca.control_plane_files
    return tls_context(True, ca.pem.decode(), str(cert), str(key))


def client_ctx(ca: ClusterCA) -> ssl.SSLContext:
    return tls_context(False, ca.pem.decode())


async def echo(request, tls):  # type: ignore[no-untyped-def]
    return {"echo": request}


def raw_connection(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_start_tls_hold_few_slots_and_not_for_long(ca, monkeypatch):
    monkeypatch.setattr(jsonline, "REQUEST_TIMEOUT_S", 1.0)

    async def run() -> None:
        server = LineServer(echo, server_ctx(ca))
        port = await server.start("127.0.0.1", 0)
        try:
            # One address opens 20 connections and never speaks: it holds MAX_PER_ADDRESS
            # slots; the rest are closed at once.
            idle = await asyncio.to_thread(
                lambda: [raw_connection(port, "127.0.0.2") for _ in range(20)]
            )
            await asyncio.sleep(0.2)
            shut = await asyncio.to_thread(lambda: [s for s in idle if closed_by_server(s, 0.05)])
            assert len(shut) == 20 - jsonline.MAX_PER_ADDRESS
            # Everyone else is answered meanwhile.
            ctx = client_ctx(ca)
            answer = await jsonline.ask(f"127.0.0.1:{port}", {"op": "x"}, ctx, "control-plane")
            assert answer == {"echo": {"op": "x"}}
            # The ones it holds are dropped at the deadline.
            kept = [s for s in idle if s not in shut]
            held = await asyncio.to_thread(lambda: sum(closed_by_server(s, 3.0) for s in kept))
            assert held == jsonline.MAX_PER_ADDRESS
            for s in idle:
                s.close()
        finally:
            await server.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("line", "said"),
    [(b"[" * 60_000 + b"\n", "nested too deeply"), (b'{"op": NaN}\n', "not a number JSON allows")],
)
def test_a_request_past_reason_gets_an_answer(ca, line: bytes, said: str) -> None:
    async def run() -> None:
        server = LineServer(echo, server_ctx(ca))
        port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx(ca), server_hostname="control-plane"
            )
            writer.write(line)
            await writer.drain()
            answer = jsonline.loads(await reader.readline())
            writer.close()
            assert answer["error"]["code"] == "invalid-input"
            assert said in answer["error"]["message"]
        finally:
            await server.stop()

    asyncio.run(run())


def test_a_trickling_or_bombing_server_costs_a_caller_its_deadline(ca) -> None:
    async def trickle(reader, writer) -> None:  # type: ignore[no-untyped-def]
        await reader.readline()
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)

    async def bomb(reader, writer) -> None:  # type: ignore[no-untyped-def]
        await reader.readline()
        writer.write(b"[" * 100_000 + b"\n")
        await writer.drain()

    async def run() -> None:
        for handler, said in ((trickle, "did not answer in time"), (bomb, "gave no answer")):
            server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(ca))
            port = server.sockets[0].getsockname()[1]
            began = time.monotonic()
            with pytest.raises(Unavailable, match=said):
                await jsonline.ask(f"127.0.0.1:{port}", {}, client_ctx(ca), "control-plane", 2.0)
            assert time.monotonic() - began < 5
            server.close()

    asyncio.run(run())


def test_json_on_the_wire_is_strict() -> None:
    for text in ("NaN", "[Infinity]", "-Infinity", "[" * 100_000):
        with pytest.raises(ValueError):
            jsonline.loads(text)
    assert jsonline.loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}


def test_an_agent_that_joined_before_command_ports_says_what_to_do(tmp_path) -> None:
    from gureum.host.agent_port import AgentPort
    from tests.unit.test_enrolment import Cluster

    cluster = Cluster(tmp_path)
    try:
        token, _ = cluster.enrolment.enrol("h2", "127.0.0.1:8444")
        from gureum.config import load_config
        from gureum.host import enrolment as agent

        config = load_config(tmp_path / "h2")
        folder = config.agent_dir
        agent.join(token, folder)
        cluster_json = folder / "cluster.json"
        old = {k: v for k, v in agent.joined(folder).items() if k != "address"}  # type: ignore[union-attr]
        import json

        cluster_json.write_text(json.dumps(old))
        port = AgentPort(config, cluster.host)
        with pytest.raises(InvalidInput, match="pass --listen"):
            cluster.run(port.start())
    finally:
        cluster.close()


def test_a_command_port_keeps_a_connection_for_the_next_request(ca) -> None:
    """Issue 17: a keep-alive server answers many requests on one connection the caller's pool
    keeps (one TLS handshake, not one per command); a refusal ends that connection, and the
    next call opens another; a server stopped and started again at the same address is never
    answered for by a connection of the old one."""

    async def counting(request, tls):  # type: ignore[no-untyped-def]
        return {"echo": request, "connection": id(tls)}

    async def refusing(request, tls):  # type: ignore[no-untyped-def]
        if request.get("op") == "bad":
            raise InvalidInput("no")
        return await counting(request, tls)

    async def run() -> None:
        server = LineServer(refusing, server_ctx(ca), keep_alive=30.0)
        port = await server.start("127.0.0.1", 0)
        address, pool = f"127.0.0.1:{port}", jsonline.Pool()
        ctx = client_ctx(ca)
        try:
            seen = {(await jsonline.ask(address, {"n": n}, ctx, "control-plane", pool=pool))[
                "connection"] for n in range(5)}  # fmt: skip
            assert len(seen) == 1 and server._open == 1  # one connection, kept
            with pytest.raises(InvalidInput):
                await jsonline.ask(address, {"op": "bad"}, ctx, "control-plane", pool=pool)
            after = await jsonline.ask(address, {"n": 6}, ctx, "control-plane", pool=pool)
            assert after["connection"] not in seen  # the refused one's connection was ended
            # Stopped: its kept connections end with it. Another server at the address
            # answers the next call (the stale connection is dropped, not believed).
            await server.stop()
            assert server._open == 0
            again = LineServer(counting, server_ctx(ca), keep_alive=30.0)
            await again.start("127.0.0.1", port)
            try:
                answer = await jsonline.ask(address, {"n": 7}, ctx, "control-plane", pool=pool)
                assert answer["echo"] == {"n": 7} and again._open == 1
            finally:
                await again.stop()
        finally:
            await server.stop()

    asyncio.run(run())
