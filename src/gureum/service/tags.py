"""Tags: a project's key/value labels on its resources (EC2's ``CreateTags``), kept by the
resource's gureum id. Bounded as EC2 bounds them: 50 a resource, keys of 1 to 128 characters,
values of at most 256, no key beginning ``aws:``."""

from __future__ import annotations

from gureum.errors import InvalidInput, QuotaExceeded
from gureum.store.tags import TagStore

MAX_PER_RESOURCE = 50
MAX_KEY, MAX_VALUE = 128, 256


class TagService:
    def __init__(self, store: TagStore) -> None:
        self.store = store

    @staticmethod
    def check(tags: dict[str, str]) -> None:
        """Refuse (InvalidInput) tags EC2 would refuse, before anything is made."""
        for key, value in tags.items():
            if not 1 <= len(key) <= MAX_KEY or len(value) > MAX_VALUE:
                raise InvalidInput(
                    f"a tag's key is 1 to {MAX_KEY} characters and its value at most {MAX_VALUE}"
                )
            if key.lower().startswith("aws:"):
                raise InvalidInput("tag keys beginning with aws: are reserved")

    def add(self, project_id: str, resource_ids: list[str], tags: dict[str, str]) -> None:
        """Set ``tags`` on each resource (the caller has checked each is the project's)."""
        self.check(tags)
        for resource in resource_ids:
            have = {k for r, k, _ in self.store.of(project_id) if r == resource}
            if len(have | set(tags)) > MAX_PER_RESOURCE:
                raise QuotaExceeded(f"a resource has at most {MAX_PER_RESOURCE} tags")
        for resource in resource_ids:
            for key, value in tags.items():
                self.store.put(project_id, resource, key, value)

    def remove(self, resource_ids: list[str], tags: dict[str, str | None]) -> None:
        """Remove each key (only where its value is the one given, if one is)."""
        for resource in resource_ids:
            for key, value in tags.items():
                self.store.remove(resource, key, value)

    def prune(self, project_id: str, existing: set[str]) -> None:
        """Drop the tags of the project's resources that are gone (all but ``existing``)."""
        self.store.forget(project_id, existing)

    def of(self, project_id: str) -> dict[str, dict[str, str]]:
        """Each resource's tags, by its gureum id (a resource gone may still be listed until
        the next ``prune``: callers look up the ids they have)."""
        out: dict[str, dict[str, str]] = {}
        for resource, key, value in self.store.of(project_id):
            out.setdefault(resource, {})[key] = value
        return out
