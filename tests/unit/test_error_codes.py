"""Every error code the API can answer is listed in docs/api.md with its status: the table is
the one place a client learns them, so a new error class without a row fails here."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import gureum
from gureum.errors import GureumError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def error_classes() -> set[type[GureumError]]:
    for module in pkgutil.walk_packages(gureum.__path__, "gureum."):
        importlib.import_module(module.name)  # every subclass, wherever it is declared
    found: set[type[GureumError]] = set()
    todo = [GureumError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def documented() -> set[tuple[int, str]]:
    rows = re.findall(r"^\| (\d{3}) \| ([^|]+) \|", DOCS.read_text(), re.M)
    return {(int(status), code) for status, codes in rows
            for code in re.findall(r"`([a-z-]+)`", codes)}  # fmt: skip


def test_every_error_code_is_in_the_api_docs_with_its_status():
    known = documented()
    for cls in error_classes():
        assert (cls.status, cls.code) in known, f"{cls.__name__}: {cls.status} {cls.code}"


def test_the_codes_routing_answers_and_the_rest_are_documented_too():
    """Routing's own answers (no such path, not with that method), the catch-all for other
    HTTP errors, and the code of an operation the service stopped under."""
    from gureum.api.errors import ROUTING_CODES

    known = documented()
    for status, code in ROUTING_CODES.items():
        assert (status, code) in known, f"{status} {code}"
    text = DOCS.read_text()
    assert "`http-error`" in text and "`interrupted`" in text
