"""The metadata service at 169.254.169.254, one endpoint per network, EC2-style.

Paths as in EC2: ``/latest/meta-data/`` (instance-id, hostname, local-ipv4, mac, public-keys/)
and ``/latest/user-data``, with plain GETs (IMDSv1) or with a session token (IMDSv2:
``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``, then the token in
``X-aws-ec2-metadata-token``). A network may require tokens.

Who is asking is decided by where the request really came from, never by what it says: the
source address of the connection, which the firewall's anti-spoofing ties to one TAP, MAC and
VM, checked again against the namespace's neighbour table (the MAC that address resolves to
must be that VM's). A token is bound to the VM it was issued to. One VM can therefore never read
another's data, even by forging headers or addresses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


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


def make_app(
    network_id: str, lookup: Lookup, tokens: Tokens, require_tokens: Callable[[], bool]
) -> Starlette:
    async def caller(request: Request) -> Caller | None:
        return await lookup(network_id, request.client.host if request.client else "")

    async def token(request: Request) -> PlainTextResponse:
        who = await caller(request)
        if who is None:
            return PlainTextResponse("Forbidden\n", status_code=403)
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return PlainTextResponse(
                "Bad Request: TTL must be 1 to 21600 seconds\n", status_code=400
            )
        return PlainTextResponse(tokens.issue(who.instance_id, ttl), headers={TTL_HEADER: str(ttl)})

    async def data(request: Request) -> PlainTextResponse:
        who = await caller(request)
        if who is None:
            return PlainTextResponse("Forbidden\n", status_code=403)
        presented = request.headers.get(TOKEN_HEADER)
        if presented is not None:
            if tokens.holder(presented) != who.instance_id:
                return PlainTextResponse("Unauthorized\n", status_code=401)
        elif require_tokens():
            return PlainTextResponse("Unauthorized\n", status_code=401)
        path = request.url.path.rstrip("/")
        keys = "".join(f"{i}=key-{i}\n" for i in range(len(who.public_keys)))
        answers = {
            "/latest/meta-data": "instance-id\nhostname\nlocal-ipv4\nmac\npublic-keys/\n",
            "/latest/meta-data/instance-id": who.instance_id,
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
        if path not in answers:
            return PlainTextResponse("Not Found\n", status_code=404)
        return PlainTextResponse(answers[path])

    return Starlette(
        routes=[
            Route("/latest/api/token", token, methods=["PUT"]),
            Route("/{path:path}", data, methods=["GET"]),
        ]
    )
