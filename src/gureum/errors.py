"""One exception hierarchy for everything a user can see go wrong.

Every error carries a stable machine-readable ``code`` (kebab-case), a human ``message`` and the
HTTP status the API maps it to. The API renders ``{"error": {"code", "message"}}`` from it and
the CLI prints the message and exits non-zero; nothing else decides how an error looks.
"""

from __future__ import annotations

from typing import TypeVar


class GureumError(Exception):
    """Base of every error gureum reports on purpose."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(GureumError):
    """The request itself is wrong: a bad name, size, count or body."""

    code = "invalid-input"
    status = 400


class CommandNotFound(InvalidInput):
    """``exec`` of a command the guest cannot start: not there, or not executable. The CLI
    exits 127 for it, as a shell does."""

    code = "command-not-found"


class VMOnly(InvalidInput):
    """A container asked for what only a VM has (a memory image, hot-plugged devices...)."""

    code = "vm-only"


class InvalidArchive(InvalidInput):
    """A backup archive that is not whole, or not what its manifest says."""

    code = "invalid-archive"


class InvalidImage(InvalidInput):
    """A disk image handed in is not what gureum takes: not qcow2, or its header names another
    file (a backing file, an external data file), or uses features gureum does not produce."""

    code = "invalid-image"


T = TypeVar("T")


class NotFound(GureumError):
    code = "not-found"
    status = 404


def found(value: T | None, what: str) -> T:
    """``value``, or NotFound("no <what>") when the store had nothing."""
    if value is None:
        raise NotFound(f"no {what}")
    return value


class Conflict(GureumError):
    """The request is valid but clashes with the current state (duplicate name, wrong state)."""

    code = "conflict"
    status = 409


class InvalidState(Conflict):
    """The resource is not in a state that allows the action (exec on a stopped VM...)."""

    code = "invalid-state"


class Unauthenticated(GureumError):
    """No valid identity: a missing, unknown or revoked token."""

    code = "unauthenticated"
    status = 401


class Forbidden(GureumError):
    """Known caller, visible resource, but the caller's role does not allow the action."""

    code = "forbidden"
    status = 403


class QuotaExceeded(GureumError):
    code = "quota-exceeded"
    status = 409


class RateLimited(GureumError):
    code = "rate-limited"
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stalled(GureumError):
    """A client stopped sending its request body."""

    code = "stalled"
    status = 408


class InsufficientCapacity(GureumError):
    """Admission control: the host cannot take this much more without over-committing."""

    code = "insufficient-capacity"
    status = 409


class Unavailable(GureumError):
    """Something the action needs is not there or not answering (the service, an agent...)."""

    code = "unavailable"
    status = 503


class Untrusted(GureumError):
    """What answered at a host agent's address is not that host's agent, or the agent refused
    the control plane's certificate: the caller's own identity is not in question (not 401)."""

    code = "untrusted"
    status = 502


class Timeout(GureumError):
    code = "timeout"
    status = 504


class EngineError(GureumError):
    """QEMU or a host tool failed; the message says what it printed."""

    code = "engine-error"
    status = 500


class ImageBuildError(GureumError):
    code = "image-build-failed"
    status = 500


def from_code(code: str, message: str) -> GureumError:
    """The error a code names, as another process reported it (a host agent's refusal raised
    again on the control plane: callers catch ``InvalidState``, not a code)."""
    pending: list[type[GureumError]] = [GureumError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.code == code and cls is not RateLimited:  # RateLimited needs its retry time
            return cls(message)
    return GureumError(message, code=code)
