"""Browser sessions of the web console, and the one-time codes that open one.

A browser never holds a token where a script can read it. The sign-in page sends a token once
(``POST /ui/session``); the service answers with a session cookie (``HttpOnly``, ``Secure``,
``SameSite=Strict``) and a CSRF value the page keeps in memory and sends back in a header with
every state-changing request. ``gureum ui`` signs a browser in without a token: it asks the
service (as whoever runs it) for a one-time code, valid for a minute, that the page trades for a
session.

Sessions live in the service's memory (a restart signs everyone out). A session made from a
token checks that token again on every request, so revoking it ends the session at once; an
administrator's session (from ``gureum ui`` as root) ends after the same idle and absolute
times as any other.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from gureum.model.tenancy import Principal

COOKIE = "gureum_session"
CSRF_HEADER = "x-csrf-token"
IDLE_S = 2 * 3600.0
ABSOLUTE_S = 12 * 3600.0
CODE_S = 60.0
MAX_SESSIONS = 1000  # all callers together: past it the least recently used ends
MAX_SESSIONS_EACH = 20  # per user (or the administrator): past it their own oldest ends
MAX_CODES = 1000
MAX_CODES_EACH = 5


@dataclass
class Session:
    principal: Principal
    secret: str | None  # the token it was made from (None: the administrator)
    # The listener it was made on ("tcp", or "ui": `gureum ui`'s socket): it works there only.
    # A browser sends a localhost cookie to every port of localhost, so a cookie of the tunnel
    # may leak to whatever else listens there; it must not then work on the TCP listener.
    transport: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def live(self, now: float) -> bool:
        return now - self.seen < IDLE_S and now - self.created < ABSOLUTE_S

    def csrf_matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


class Sessions:
    """Sessions and sign-in codes, shared by every listener of one service."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._codes: dict[str, tuple[Principal, str | None, float]] = {}

    def open(self, principal: Principal, secret: str | None, transport: str) -> tuple[str, Session]:
        """A new session: (its cookie value, it). One caller's many sign-ins end their own
        oldest sessions, never another user's."""
        now = time.monotonic()
        self._sessions = {k: s for k, s in self._sessions.items() if s.live(now)}
        mine = [k for k, s in self._sessions.items() if s.principal.name == principal.name]
        for key in sorted(mine, key=lambda k: self._sessions[k].seen)[
            : max(0, len(mine) - MAX_SESSIONS_EACH + 1)
        ]:
            del self._sessions[key]
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].seen)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        session = self._sessions[sid] = Session(principal, secret, transport)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        now = time.monotonic()
        if session is None or not session.live(now):
            self._sessions.pop(sid, None)
            return None
        session.seen = now
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def code(self, principal: Principal, secret: str | None) -> str:
        """A one-time sign-in code for ``principal``, valid CODE_S seconds (a caller's sixth
        outstanding code ends their oldest)."""
        now = time.monotonic()
        self._codes = {k: v for k, v in self._codes.items() if v[2] > now}
        mine = sorted((v[2], k) for k, v in self._codes.items() if v[0].name == principal.name)
        for _, key in mine[: max(0, len(mine) - MAX_CODES_EACH + 1)]:
            del self._codes[key]
        while len(self._codes) >= MAX_CODES:
            del self._codes[min(self._codes, key=lambda k: self._codes[k][2])]
        value = secrets.token_urlsafe(32)
        self._codes[value] = (principal, secret, now + CODE_S)
        return value

    def redeem(self, value: str) -> tuple[Principal, str | None] | None:
        """The code's caller, once; None for an unknown, used or expired code."""
        found = self._codes.pop(value, None)
        if found is None or found[2] <= time.monotonic():
            return None
        return found[0], found[1]


def cookie_value(headers: dict[str, str]) -> str | None:
    """The session cookie in a request's Cookie header, if any."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def set_cookie_header(sid: str) -> str:
    return f"{COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=Strict"


def clear_cookie_header() -> str:
    return f"{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"
