"""One JSON line each way over TLS: the cluster's wire, both ends.

The control plane's cluster port (agents join and report) and each host agent's command port
(the control plane asks) speak it: one request per connection, one JSON object per line, an
answer ``{"error": {"code", "message"}}`` for a refusal.

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
    def __init__(self, answer: Answer, ctx: ssl.SSLContext, peer: PeerCheck | None = None) -> None:
        self.answer, self.ctx, self.peer = answer, ctx, peer
        self._open = 0
        self._per_address: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port listened on (``port`` 0: one the system chose). Plain TCP: TLS
        starts once the connection has a slot."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        held = self._per_address.get(address, 0)
        if self._open >= MAX_CONNECTIONS or held >= MAX_PER_ADDRESS:
            writer.close()
            return
        self._open += 1
        self._per_address[address] = held + 1
        try:
            await self._one(reader, writer)
        finally:
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
        try:
            if self.peer is not None:
                self.peer(tls)
            async with asyncio.timeout_at(deadline):
                line = await reader.readline()
            request = loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            answer = await self.answer(request, tls)
        except GureumError as exc:
            answer = {"error": {"code": exc.code, "message": exc.message}}
        except (TimeoutError, ValueError, ConnectionError, ssl.SSLError) as exc:
            answer = {"error": {"code": "invalid-input", "message": f"bad request: {exc}"}}
        except Exception as exc:  # one bad request ends its own connection, nothing more
            log.error("a request failed: %s: %s", type(exc).__name__, exc)
            answer = {"error": {"code": "internal", "message": "the request failed"}}
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
            if isinstance(answer, Streamed):
                await _stream(writer, answer)
                return
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)


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


async def ask(
    address: str,
    request: dict[str, Any],
    ctx: ssl.SSLContext,
    server_name: str,
    timeout: float = CALL_TIMEOUT_S,
) -> dict[str, Any]:
    """One request to ``HOST:PORT``, whose certificate must be issued for ``server_name``; its
    answer (GureumError with the answer's class if it refused), within ``timeout`` in all."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _connect(address, ctx, server_name)
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, ValueError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise _failed(exc, address, server_name) from exc
    return _answer(line, f"{server_name} at {address}")


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
