"""One JSON line each way over TLS: the cluster's wire, both ends.

The control plane's cluster port (agents join and report) and each host agent's command port
(the control plane asks) speak it: one JSON object per line each way, an answer ``{"error":
{"code", "message"}}`` for a refusal. The cluster port takes one request per connection. A
command port keeps a connection open for the next request (``keep_alive``): only the control
plane passes its peer check, and a new TLS connection costs a command 10 ms here, several
times the command itself; the control plane keeps a few idle ones per agent (``Pool``).

Whoever can reach a port may be hostile, so a server bounds everything before it trusts
anything: a connection takes a slot before its TLS handshake (slots are bounded, and so are
those one address may hold), and the handshake, the peer check and the request line together
have one deadline. A client bounds each call as a whole: one deadline for connecting, the
handshake and the answer, and the answer's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gureum.errors import GureumError, Unauthenticated, Unavailable, from_code

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 10.0  # a connection's handshake, peer check and request line, together
CALL_TIMEOUT_S = 60.0  # a client's whole call: a remote host's work may take a while
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8  # so that one address cannot hold every slot
MAX_ANSWER = 1 << 20
KEEP_ALIVE_S = 30.0  # how long a command port waits for the next request on a connection
POOL_IDLE_S = 10.0  # how long the control plane reuses an idle one: well inside KEEP_ALIVE_S
POOL_SIZE = 2  # idle connections kept per agent (MAX_PER_ADDRESS bounds all of them)
MAX_REQUESTS = 10_000  # on one kept connection

CHUNK = 1 << 20
MIN_RATE = 4 << 20  # bytes a second a streamed answer's reader must take, on average


@dataclass(frozen=True)
class Streamed:
    """An answer with a body: its header line, then the file's bytes (as many as the header
    says), sent as fast as the reader takes them, the whole within a deadline (``MIN_RATE``)."""

    header: dict[str, Any]
    path: Path


# What answers a request: the request and the TLS connection (whose peer certificate says who
# asks); raises GureumError to refuse.
Answer = Callable[[dict[str, Any], ssl.SSLObject | None], Awaitable[dict[str, Any] | Streamed]]
# What a server checks of a peer right after the handshake, before it reads anything (raises
# GureumError to refuse): a command port lets no one but the control plane hold a slot.
PeerCheck = Callable[[ssl.SSLObject | None], None]


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(data: bytes | str) -> Any:
    """Strict JSON: NaN and infinities refused, nesting too deep refused (both ValueError)."""
    try:
        return json.loads(data, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class LineServer:
    def __init__(
        self,
        answer: Answer,
        ctx: ssl.SSLContext,
        peer: PeerCheck | None = None,
        keep_alive: float | None = None,
    ) -> None:
        """``keep_alive``: seconds a connection waits for another request after an answer
        (None: one request per connection). Only for a port whose peer check lets no one but
        a trusted peer hold a slot: an idle connection keeps its slot."""
        self.answer, self.ctx, self.peer, self.keep_alive = answer, ctx, peer, keep_alive
        self._serving: set[asyncio.Task[Any]] = set()  # each connection's, ended at ``stop``
        self._open = 0
        self._per_address: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (``port`` 0: one the system chose). Plain TCP: TLS
        starts once the connection has a slot."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end every connection, kept ones too: nothing this server was
        answers after it stopped."""
        if self.server is not None:
            self.server.close()
            for task in list(self._serving):
                task.cancel()
            await asyncio.gather(*self._serving, return_exceptions=True)
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        held = self._per_address.get(address, 0)
        if self._open >= MAX_CONNECTIONS or held >= MAX_PER_ADDRESS:
            writer.close()
            return
        self._open += 1
        self._per_address[address] = held + 1
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            await self._one(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # stopped: the connection goes at once
        finally:
            if task is not None:
                self._serving.discard(task)
            await _closed(writer)  # the slot is given back once the socket is gone
            self._open -= 1
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        try:
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(self.ctx, ssl_handshake_timeout=REQUEST_TIMEOUT_S)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            return  # no TLS, no answer: nothing was read
        tls = writer.get_extra_info("ssl_object")
        for served in range(MAX_REQUESTS):
            line: bytes | None = None
            if served:  # a kept connection: the next request, or quiet and then closed
                try:
                    async with asyncio.timeout(self.keep_alive):
                        line = await reader.readline()
                except (TimeoutError, ValueError, ConnectionError, ssl.SSLError, OSError):
                    return
                if not line:
                    return
            answer = await self._request(reader, line, tls, deadline)
            if isinstance(answer, Streamed):
                with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
                    await _stream(writer, answer)
                return
            with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
                writer.write(json.dumps(answer).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
            if self.keep_alive is None or "error" in answer or writer.is_closing():
                return  # a refusal ends a connection: a bad peer gets no second go

    async def _request(
        self,
        reader: asyncio.StreamReader,
        line: bytes | None,
        tls: ssl.SSLObject | None,
        deadline: float,
    ) -> dict[str, Any] | Streamed:
        """The answer to one request (``line``; None: the connection's first, read here
        within ``deadline``, after the peer check)."""
        try:
            if line is None:
                if self.peer is not None:
                    self.peer(tls)
                async with asyncio.timeout_at(deadline):
                    line = await reader.readline()
            request = loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            return await self.answer(request, tls)
        except GureumError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except (TimeoutError, ValueError, ConnectionError, ssl.SSLError) as exc:
            return {"error": {"code": "invalid-input", "message": f"bad request: {exc}"}}
        except Exception as exc:  # one bad request ends its own connection, nothing more
            log.error("a request failed: %s: %s", type(exc).__name__, exc)
            return {"error": {"code": "internal", "message": "the request failed"}}


async def _stream(writer: asyncio.StreamWriter, answer: Streamed) -> None:
    """The header, then the file, within a deadline for the whole of it (MIN_RATE): a reader
    that takes it slower, or stops, is dropped at once, its buffers with it."""
    size = answer.path.stat().st_size
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S + size / MIN_RATE):
            with answer.path.open("rb") as f:
                writer.write(json.dumps(answer.header).encode() + b"\n")
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    writer.write(chunk)
                    await writer.drain()
    except TimeoutError:
        writer.transport.abort()
        raise


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Close, waiting briefly for the peer to take what is left; then drop it."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
        writer.transport.abort()


async def _connect(
    address: str, ctx: ssl.SSLContext, server_name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(
        host.strip("[]"), int(port), ssl=ctx, server_hostname=server_name,
        limit=MAX_ANSWER, ssl_handshake_timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip


def _answer(line: bytes, where: str) -> dict[str, Any]:
    """An answer line as a dict; the error it carries raised as its own class."""
    try:
        answer = loads(line)
    except ValueError:
        raise Unavailable(f"{where} gave no answer") from None
    if not isinstance(answer, dict):
        raise Unavailable(f"{where} gave no answer")
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        raise from_code(str(error.get("code"))[:64], str(error.get("message"))[:1000])
    return answer


def _failed(exc: BaseException, address: str, server_name: str) -> GureumError:
    """What a call that failed on the way (not refused by the peer) is reported as."""
    where = f"{server_name} at {address}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Unauthenticated(f"{address} is not the cluster's {server_name}: {exc}")
    if isinstance(exc, ssl.SSLError) and (
        "CERTIFICATE" in str(exc.reason or "").upper() or "UNKNOWN_CA" in str(exc.reason)
    ):
        return Unauthenticated(f"{where} refused this side's certificate")
    if isinstance(exc, TimeoutError):
        return Unavailable(f"{where} did not answer in time")
    return Unavailable(f"cannot reach {where}: {exc}")  # ValueError: past MAX_ANSWER


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Idle connections to keep-alive servers (command ports), kept for the next call: by
    address and the name the server's certificate was checked for, on the event loop they
    were made on, each reused for ``POOL_IDLE_S`` at most (the server keeps it longer)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str], list[tuple[float, Connection]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, address: str, server_name: str) -> Connection | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections of another (ended) loop are no use here
            for _, (_, writer) in (c for idle in self._idle.values() for c in idle):
                with contextlib.suppress(RuntimeError):  # its loop is closed: gone with it
                    writer.transport.abort()
            self._idle, self._loop = {}, loop
        self._prune(loop.time())
        idle = self._idle.get((address, server_name), [])
        while idle:
            _, conn = idle.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    def give(self, address: str, server_name: str, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault((address, server_name), [])
        if loop is self._loop and len(idle) < POOL_SIZE:
            idle.append((loop.time(), conn))
        else:
            conn[1].close()

    def _prune(self, now: float) -> None:
        """Close every idle connection past ``POOL_IDLE_S``, whichever agent it is to."""
        for key, idle in list(self._idle.items()):
            fresh = [(since, c) for since, c in idle if now - since < POOL_IDLE_S]
            for since, (_, writer) in idle:
                if now - since >= POOL_IDLE_S:
                    writer.close()
            self._idle[key] = fresh


async def _exchange(conn: Connection, request: dict[str, Any]) -> bytes:
    reader, writer = conn
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    return await reader.readline()


async def ask(
    address: str,
    request: dict[str, Any],
    ctx: ssl.SSLContext,
    server_name: str,
    timeout: float = CALL_TIMEOUT_S,
    pool: Pool | None = None,
) -> dict[str, Any]:
    """One request to ``HOST:PORT``, whose certificate must be issued for ``server_name``; its
    answer (GureumError with the answer's class if it refused), within ``timeout`` in all.
    With ``pool`` (a keep-alive server), over an idle connection if it has one, and the
    connection is kept after an answer that is not a refusal. One that ends with no answer
    (the server closed it, or restarted) is dropped and the request sent once more on a new
    one: it is done twice only if the server took it, died before answering, and another
    answered at that address at once."""
    where = f"{server_name} at {address}"
    kept: Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            kept = pool.take(address, server_name) if pool is not None else None
            line = b""
            if kept is not None:
                try:
                    line = await _exchange(kept, request)
                except OSError:  # reset or broken: the request never reached a live server
                    line = b""
                conn = kept
                if not line:
                    kept[1].close()
            if not line:
                conn = await _connect(address, ctx, server_name)
                try:
                    line = await _exchange(conn, request)
                except BaseException:
                    conn[1].close()
                    raise
    except (OSError, ValueError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        if kept is not None:
            kept[1].close()  # cut short mid-call: its state is unknown
        raise _failed(exc, address, server_name) from exc
    except BaseException:  # cancelled mid-call
        if kept is not None:
            kept[1].close()
        raise
    try:
        answer = _answer(line, where)
    except BaseException:
        conn[1].close()  # a refusal ends the connection at the server too
        raise
    if pool is not None:
        pool.give(address, server_name, conn)
    else:
        conn[1].close()
    return answer


async def fetch(
    address: str,
    request: dict[str, Any],
    ctx: ssl.SSLContext,
    server_name: str,
    dest: Path,
    max_bytes: int,
) -> dict[str, Any]:
    """A request answered with a body (``Streamed``): the body written to ``dest`` (a new file,
    never one that exists or a link), at most ``max_bytes`` of it, each step within the request
    deadline. Returns the header with what arrived: ``received_bytes`` and ``received_sha256``.
    Nothing is left at ``dest`` on failure."""
    where = f"{server_name} at {address}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.fdopen(os.open(dest, flags, 0o600), "wb")
    try:
        with out:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await _connect(address, ctx, server_name)
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                header = _answer(await reader.readline(), where)
            try:
                size = header.get("bytes")
                if (
                    isinstance(size, bool)
                    or not isinstance(size, int)
                    or not 0 <= size <= max_bytes
                ):
                    raise Unavailable(f"{where} offered {size!r} bytes")
                digest = await _receive(reader, out, size, where)
            finally:
                writer.close()
            out.flush()
            os.fsync(out.fileno())
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, OSError | ValueError | TimeoutError):
            raise _failed(exc, address, server_name) from exc
        raise
    return {**header, "received_bytes": size, "received_sha256": digest}


async def _receive(reader: asyncio.StreamReader, out: Any, size: int, where: str) -> str:
    """``size`` bytes of a body into ``out``; their SHA-256."""
    digest, received = hashlib.sha256(), 0
    while received < size:
        want = min(CHUNK, size - received)
        chunk = await asyncio.wait_for(reader.read(want), REQUEST_TIMEOUT_S)
        if not chunk:
            raise Unavailable(f"{where} ended the transfer early")
        digest.update(chunk)
        await asyncio.to_thread(out.write, chunk)
        received += len(chunk)
    return digest.hexdigest()


def ask_blocking(
    address: str, request: dict[str, Any], ctx: ssl.SSLContext, server_name: str
) -> dict[str, Any]:
    """``ask`` from code with no event loop of its own (the CLI, a thread)."""
    return asyncio.run(ask(address, request, ctx, server_name))


def tls_context(
    server: bool, ca_pem: str, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """TLS 1.3 checking the peer against the cluster CA (a server: a client certificate asked
    for, and checked when given; the caller says whether one is needed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if server:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
