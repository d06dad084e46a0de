"""User-data as a tenant hands it in: bounded, and valid when it says it is cloud-config.

cloud-init reads user-data that starts with ``#cloud-config`` as YAML and, when that YAML is
broken, quietly does nothing of it (``cloud-init status`` then says ``error``, long after the
launch). So it is parsed here, before anything is made, and refused with the parser's own
words. Other kinds (a ``#!`` script, MIME multipart, ``#include``) are passed as they are.
"""

from __future__ import annotations

import yaml

from gureum.errors import InvalidInput

MAX_USER_DATA = 64 * 1024


def check_user_data(text: str) -> None:
    if len(text.encode()) > MAX_USER_DATA:
        raise InvalidInput(f"user data must be at most {MAX_USER_DATA // 1024} KiB")
    if not text.startswith("#cloud-config"):
        return
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # nesting deeper than the parser's stack: not a 500
        raise InvalidInput("cloud-config user data is nested too deeply") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise InvalidInput(
            f"user data starts with #cloud-config but is not valid YAML{line}: {problem}"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise InvalidInput(
            "cloud-config user data must be a YAML mapping (key: value lines), "
            f"not a {type(data).__name__}"
        )
