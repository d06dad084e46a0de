"""Parsing and printing of sizes and durations the way users type them (512M, 2G, 30d)."""

from __future__ import annotations

import re

from gureum.errors import InvalidInput

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_UNITS = {
    "": 1,
    "B": 1,
    "K": KIB,
    "KB": KIB,
    "KIB": KIB,
    "M": MIB,
    "MB": MIB,
    "MIB": MIB,
    "G": GIB,
    "GB": GIB,
    "GIB": GIB,
    "T": TIB,
    "TB": TIB,
    "TIB": TIB,
}

# Matched whole, and ASCII only: \d alone would take digits of any script.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", re.ASCII)


def parse_size(text: str | int, *, default_unit: str = "B", what: str = "size") -> int:
    """Return a size in bytes. Units are binary (``1G`` is 1 GiB), as in QEMU and qemu-img.

    A bare number is taken in ``default_unit``. Raises InvalidInput on anything else, negative
    numbers included (the regex has no sign).
    """
    if isinstance(text, bool):
        raise InvalidInput(f"{what} must be a size such as 512M or 2G, not {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidInput(f"{what} must not be negative")
        return text * _UNITS[default_unit.upper()]
    match = _SIZE.fullmatch(text)
    if not match:
        raise InvalidInput(f"{what} must be a size such as 512M or 2G, not {text!r}")
    number, unit = match.groups()
    unit = unit.upper() or default_unit.upper()
    if unit not in _UNITS:
        raise InvalidInput(f"{what}: unknown unit {match.group(2)!r} (use K, M, G or T)")
    return int(float(number) * _UNITS[unit])


def format_size(num_bytes: int | float) -> str:
    """Short human form: 512M, 2G, 1.5G."""
    for unit, factor in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if num_bytes >= factor:
            value = num_bytes / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{int(num_bytes)}B"


_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*", re.ASCII)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, what: str = "duration") -> int:
    """Seconds, from 90s, 15m, 12h, 30d or 2w (a bare number is seconds)."""
    match = _DURATION.fullmatch(text)
    if not match or int(match.group(1)) <= 0:
        raise InvalidInput(f"{what} must be a duration such as 12h, 30d or 2w, not {text!r}")
    return int(match.group(1)) * _SECONDS[match.group(2)]
