"""The quota table (``model/tenancy.py``) is the one place a quota is declared: the project's
fields, the store's columns, the API's request bodies, the CLI's options and the quota check
all follow it."""

from __future__ import annotations

import dataclasses

from gureum.api.routes.tenancy import ProjectIn, QuotasIn
from gureum.cli.tenancy import QUOTAS as CLI_QUOTAS
from gureum.model.tenancy import LIMITS, QUOTAS, Project
from gureum.service.quotas import _WHAT
from gureum.store.schema import projects

FIELDS = [q.field for q in QUOTAS + LIMITS]


def test_the_project_holds_every_quota_of_the_table():
    declared = [f.name for f in dataclasses.fields(Project)]
    assert [f for f in declared if f in FIELDS] == FIELDS
    extra = set(declared) - set(FIELDS) - {"id", "name", "created_at"}
    assert not extra, f"Project fields missing from the quota table: {extra}"


def test_the_store_has_one_column_a_quota():
    columns = [c.name for c in projects.columns if c.name not in ("id", "name", "created_at")]
    assert columns == FIELDS


def test_the_api_takes_exactly_the_quotas_of_the_table():
    assert list(QuotasIn.model_fields) == FIELDS
    assert list(ProjectIn.model_fields) == ["name", *FIELDS]


def test_the_cli_has_one_option_a_quota():
    assert [q.field for q in CLI_QUOTAS] == FIELDS


def test_every_allocation_quota_is_checked():
    assert sorted(_WHAT) == sorted(q.counts for q in QUOTAS)
    assert all(q.counts is None for q in LIMITS)
