"""The metadata service at 169.254.169.254, one endpoint per network, EC2-style.

Paths as in EC2: ``/latest/meta-data/`` (instance-id, hostname, local-ipv4, mac, public-keys/)
and ``/latest/user-data``, and the same for cloud-init's NoCloud datasource under ``/nocloud/``,
with plain GETs (IMDSv1) or with a session token (IMDSv2:
``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``, then the token in
``X-aws-ec2-metadata-token``). A network may require tokens.

Who is asking is decided by where the request really came from, never by what it says: the
source address of the connection, which the firewall's anti-spoofing ties to one TAP, MAC and
VM, checked again against the namespace's neighbour table (the MAC that address resolves to
must be that VM's). A token is bound to the VM it was issued to. One VM can therefore never read
another's data, even by forging headers or addresses.

Guests are hostile in how they connect, too: ``MetadataServer`` bounds what each can hold open
and for how long (a flood of half-open connections once took the whole service to its file
limit).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gureum.errors import Unavailable
from gureum.ids import ec2_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    instance_id: str
    hostname: str
    ip: str
    mac: str
    public_keys: tuple[str, ...]
    user_data: str | None


# (network id, source ip) -> the VM that owns that address here, MAC-checked; None otherwise.
Lookup = Callable[[str, str], Awaitable[Caller | None]]

TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"


class Tokens:
    """Stateless IMDSv2 tokens: HMAC over (instance, expiry) with a per-service secret."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def issue(self, instance_id: str, ttl: int) -> str:
        body = json.dumps({"i": instance_id, "e": int(time.time()) + ttl}).encode()
        sig = hmac.new(self._key, body, hashlib.sha256).digest()
        return (
            base64.urlsafe_b64encode(body).decode() + "." + base64.urlsafe_b64encode(sig).decode()
        )

    def holder(self, token: str) -> str | None:
        try:
            body_b64, sig_b64 = token.split(".")
            body = base64.urlsafe_b64decode(body_b64)
            sig = base64.urlsafe_b64decode(sig_b64)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(hmac.new(self._key, body, hashlib.sha256).digest(), sig):
            return None
        data = json.loads(body)
        return data["i"] if data["e"] >= time.time() else None


# What one guest (one source address) and one network may hold open at once, how long a guest
# may take to send its request head, and how large that head may be. A connection over a limit
# is closed at once, so a flood costs the service no file descriptors beyond these.
PER_SOURCE = 8
PER_NETWORK = 128
HEAD_TIMEOUT_S = 5.0
MAX_HEAD = 8192
# Requests per second one guest may make (a token bucket), and how long who owns an address is
# remembered: each lookup reads the namespace's neighbour table (a process) and the store.
RATE_PER_S = 20.0
RATE_BURST = 40.0
LOOKUP_TTL_S = 1.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           429: "Too Many Requests", 503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def nocloud(who: Caller) -> dict[str, str]:
    """The same facts for cloud-init's NoCloud datasource (``ds=nocloud-net;s=.../nocloud/``,
    announced through SMBIOS): meta-data as JSON (which YAML reads as it is, so no string from a
    tenant can become YAML syntax), and user-data, empty when there is none (cloud-init treats a
    missing user-data as a failed datasource)."""
    meta = {
        "instance-id": who.instance_id,
        "local-hostname": who.hostname,
        "public-keys": list(who.public_keys),
    }
    return {
        # UTF-8, not \u escapes: YAML reads a JSON escaped surrogate pair as two lone halves.
        "/nocloud/meta-data": json.dumps(meta, indent=1, ensure_ascii=False) + "\n",
        "/nocloud/user-data": who.user_data or "",
    }


def _text(status: int) -> Answer:
    return Answer(status, f"{REASONS[status]}\n")


class MetadataServer:
    """One network's metadata endpoint: a small HTTP/1.1 server of its own, one request per
    connection, every guest bounded (``PER_SOURCE``, ``PER_NETWORK``, ``HEAD_TIMEOUT_S``,
    ``MAX_HEAD``). Not a general web server on purpose: guests are hostile, and the few
    requests IMDS clients make need nothing more."""

    def __init__(
        self,
        network_id: str,
        lookup: Lookup,
        tokens: Tokens,
        require_tokens: Callable[[], bool],
    ) -> None:
        self.network_id = network_id
        self.lookup = lookup
        self.tokens = tokens
        self.require_tokens = require_tokens
        self._server: asyncio.Server | None = None
        self._open: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)
        self._callers: dict[str, tuple[float, Caller | None]] = {}  # source -> (when, who)
        self._asking: dict[str, asyncio.Future[Caller | None]] = {}  # source -> its lookup
        self.refused = 0  # connections closed at once for being over a limit

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def forget_callers(self) -> None:
        """NICs changed (an address may now be another VM's): ask again from now on."""
        self._callers.clear()

    def open_connections(self) -> int:
        return sum(self._open.values())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else ""
        if self._open.get(source, 0) >= PER_SOURCE or self.open_connections() >= PER_NETWORK:
            self.refused += 1
            writer.transport.abort()  # no answer, no lingering: the descriptor is freed now
            return
        self._open[source] = self._open.get(source, 0) + 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            answer = await self._serve(reader, source)
            head = f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, '')}\r\n"
            body = answer.body.encode()
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                       ("Connection", "close"), *answer.headers]  # fmt: skip
            head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
            writer.write(head.encode() + body)
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("metadata request on %s failed", self.network_id)
        finally:
            self._tasks.discard(task)
            self._open[source] -= 1
            if not self._open[source]:
                del self._open[source]
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, source: str) -> Answer:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except TimeoutError:
            return _text(408)
        except asyncio.LimitOverrunError:
            return _text(400)
        try:
            request_line, *lines = raw.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ")
        except ValueError:
            return _text(400)
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if not self._take(source):
            return _text(429)
        try:
            who = await self._caller(source)
        except Unavailable:  # a joined host's control plane did not answer: try again later
            return _text(503)
        if who is None:
            return _text(403)
        if path == "/latest/api/token":
            return self._token(method, headers, who) if method == "PUT" else _text(405)
        if method != "GET":
            return _text(405)
        return self._data(path, headers, who)

    def _take(self, source: str) -> bool:
        now = time.monotonic()
        tokens, then = self._buckets.get(source, (RATE_BURST, now))
        tokens = min(RATE_BURST, tokens + (now - then) * RATE_PER_S)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1, now)
        return True

    async def _caller(self, source: str) -> Caller | None:
        """Who owns ``source``: remembered a second, and asked once at a time however many
        of its connections wait (a joined host asks the control plane: a guest's 8
        connections must cost one question, not 8). Unavailable (not remembered) when the
        lookup could not say."""
        now = time.monotonic()
        cached = self._callers.get(source)
        if cached is not None and now - cached[0] < LOOKUP_TTL_S:
            return cached[1]
        asking = self._asking.get(source)
        if asking is None:
            asking = asyncio.ensure_future(self.lookup(self.network_id, source))
            self._asking[source] = asking
            asking.add_done_callback(lambda _f: self._asking.pop(source, None))
        who = await asyncio.shield(asking)  # one waiter's cancel ends no other's
        if len(self._callers) > 4 * PER_NETWORK:  # addresses come and go: forget stale ones
            self._callers = {s: c for s, c in self._callers.items() if now - c[0] < LOOKUP_TTL_S}
        self._callers[source] = (now, who)
        return who

    def _token(self, method: str, headers: dict[str, str], who: Caller) -> Answer:
        try:
            ttl = int(headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return Answer(400, "Bad Request: TTL must be 1 to 21600 seconds\n")
        return Answer(200, self.tokens.issue(who.instance_id, ttl), ((TTL_HEADER, str(ttl)),))

    def _data(self, path: str, headers: dict[str, str], who: Caller) -> Answer:
        presented = headers.get(TOKEN_HEADER)
        if presented is not None:
            if self.tokens.holder(presented) != who.instance_id:
                return _text(401)
        elif self.require_tokens():
            return _text(401)
        path = path.rstrip("/")
        keys = "".join(f"{i}=key-{i}\n" for i in range(len(who.public_keys)))
        answers = {
            "/latest/meta-data": "instance-id\nhostname\nlocal-ipv4\nmac\npublic-keys/\n",
            # EC2's shape, as the EC2 API shows it (cloud-init's NoCloud keeps gureum's own).
            "/latest/meta-data/instance-id": ec2_id("i", who.instance_id),
            "/latest/meta-data/hostname": who.hostname,
            "/latest/meta-data/local-hostname": who.hostname,
            "/latest/meta-data/local-ipv4": who.ip,
            "/latest/meta-data/mac": who.mac,
            "/latest/meta-data/public-keys": keys,
        }
        for i, key in enumerate(who.public_keys):
            answers[f"/latest/meta-data/public-keys/{i}"] = "openssh-key\n"
            answers[f"/latest/meta-data/public-keys/{i}/openssh-key"] = key + "\n"
        if who.user_data is not None:
            answers["/latest/user-data"] = who.user_data
        answers.update(nocloud(who))
        if path not in answers:
            return _text(404)
        return Answer(200, answers[path])
