"""The EC2 Query protocol's parameters: flat ``Key=value`` pairs (form body or query string),
lists numbered from 1 (``InstanceId.1``), filters (``Filter.1.Name``, ``Filter.1.Value.1``) and
tag specifications (``TagSpecification.1.Tag.1.Key``)."""

from __future__ import annotations

import builtins
import re

from gureum.api.ec2.errors import Ec2Error, invalid

MAX_PARAMS = 1000  # what one request may carry: a bounded parse whatever is sent
MAX_LIST = 1000


class Params:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        if len(pairs) > MAX_PARAMS:
            raise Ec2Error("InvalidParameterCombination", f"more than {MAX_PARAMS} parameters")
        self.values = dict(pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if value is None or value == "":
            raise Ec2Error("MissingParameter", f"The request must contain the parameter {name}")
        return value

    def int(self, name: str, default: int, low: int = 0, high: int = 1 << 31) -> int:
        raw = self.values.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise invalid(name, raw[:40], f"It must be a whole number from {low} to {high}.")
        return int(raw)

    def bool(self, name: str) -> bool:
        return (self.values.get(name) or "").lower() == "true"

    def list(self, prefix: str) -> builtins.list[str]:
        """``prefix.1``, ``prefix.2``... in order (``InstanceId.N``)."""
        found = []
        pattern = re.compile(re.escape(prefix) + r"\.(\d{1,4})")
        for key, value in self.values.items():
            m = pattern.fullmatch(key)
            if m:
                found.append((int(m.group(1)), value))
        if len(found) > MAX_LIST:
            raise invalid(prefix, len(found), f"At most {MAX_LIST} values.")
        return [v for _, v in sorted(found)]

    def filters(self) -> dict[str, builtins.list[str]]:
        """``Filter.N.Name`` -> its ``Filter.N.Value.M`` values."""
        names = {}
        pattern = re.compile(r"Filter\.(\d{1,4})\.Name")
        for key, value in self.values.items():
            m = pattern.fullmatch(key)
            if m:
                names[m.group(1)] = value
        out: dict[str, builtins.list[str]] = {}
        for index, name in names.items():
            out.setdefault(name, []).extend(self.list(f"Filter.{index}.Value"))
        return out

    def tags(self, resource_type: str) -> dict[str, str]:
        """The tags a ``TagSpecification`` gives resources of ``resource_type`` (``Tag.N`` of
        CreateTags too when ``resource_type`` is empty)."""
        tags: dict[str, str] = {}
        pattern = re.compile(r"TagSpecification\.(\d{1,4})\.ResourceType")
        indices = [
            m.group(1)
            for k, v in self.values.items()
            if (m := pattern.fullmatch(k)) and v == resource_type
        ]
        prefixes = [f"TagSpecification.{i}.Tag" for i in indices] if resource_type else ["Tag"]
        for prefix in prefixes:
            tag_index = re.compile(re.escape(prefix) + r"\.(\d{1,4})\.Key")
            for key, value in self.values.items():
                m = tag_index.fullmatch(key)
                if m:
                    tags[value] = self.values.get(f"{prefix}.{m.group(1)}.Value", "")
        return tags
