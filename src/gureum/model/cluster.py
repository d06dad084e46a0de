"""What both ends of the cluster agree on: the join token's form and the control plane's name
(the common name of its certificate from the cluster CA)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass

from gureum.errors import InvalidInput

CONTROL_PLANE = "control-plane"
TOKEN_PREFIX = "gureum-join1."
ADDRESS = re.compile(r"[A-Za-z0-9.:\[\]-]{1,253}:\d{1,5}")


@dataclass(frozen=True)
class JoinToken:
    control_plane: str  # HOST:PORT of the cluster port
    host: str
    secret: str
    ca: str  # the CA certificate's SHA-256

    def encode(self) -> str:
        body = json.dumps(asdict(self), separators=(",", ":")).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        bad = InvalidInput("not a gureum join token (gureum host enroll prints one)")
        if not text.startswith(TOKEN_PREFIX) or len(text) > 4096:
            raise bad
        body = text[len(TOKEN_PREFIX) :]
        try:
            fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            token = cls(**{k: str(fields[k]) for k in ("control_plane", "host", "secret", "ca")})
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise bad from None
        if not ADDRESS.fullmatch(token.control_plane):
            raise bad
        return token
