"""EC2's errors: a code from EC2's list, a message, an HTTP status; gureum's own errors mapped
onto them (the mapping is the one place a gureum code becomes an EC2 one)."""

from __future__ import annotations

from gureum.errors import GureumError


class Ec2Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def auth_failure(message: str) -> Ec2Error:
    return Ec2Error("AuthFailure", message, 401)


def invalid(name: str, value: object, why: str) -> Ec2Error:
    return Ec2Error(
        "InvalidParameterValue", f"Value ({value}) for parameter {name} is invalid. {why}"
    )


# gureum error code -> EC2 error code (status follows EC2's: 400 unless said)
_CODES = {
    "invalid-input": ("InvalidParameterValue", 400),
    "invalid-state": ("IncorrectInstanceState", 400),
    "conflict": ("InvalidParameterValue", 400),
    "quota-exceeded": ("InstanceLimitExceeded", 400),
    "insufficient-capacity": ("InsufficientInstanceCapacity", 500),
    "forbidden": ("UnauthorizedOperation", 403),
    "unauthenticated": ("AuthFailure", 401),
    "rate-limited": ("RequestLimitExceeded", 503),
    "vm-only": ("UnsupportedOperation", 400),
}


def from_gureum(exc: GureumError, not_found: str = "InvalidParameterValue") -> Ec2Error:
    """The EC2 error for a gureum one; ``not_found``: the code a missing resource has here
    (InvalidInstanceID.NotFound, InvalidGroup.NotFound...)."""
    if exc.status == 404:
        return Ec2Error(not_found, exc.message, 400)
    code, status = _CODES.get(exc.code, ("InternalError", 500 if exc.status >= 500 else 400))
    return Ec2Error(code, exc.message, status)
