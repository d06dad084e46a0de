"""The store's tests run on both backends: SQLite (the default) and a real PostgreSQL."""

from __future__ import annotations

import pytest

from gureum.store.db import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL to an empty database; None means the SQLite file under the home."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def db(db_url, tmp_path):
    database = Database.open_url(db_url) if db_url else Database.open_sqlite(tmp_path / "s.db")
    yield database
    database.close()
