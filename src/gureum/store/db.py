"""The store's connection: one SQLAlchemy engine, SQLite in WAL mode by default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event

from gureum.store.migrations import migrate


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": 10},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        # WAL lets readers run while a writer commits; busy_timeout makes concurrent writers
        # wait instead of failing with "database is locked".
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


class Database:
    """Owns the engine; repositories borrow connections from it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open_sqlite(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(sqlite_engine(path))
        db.migrate()
        return db

    def migrate(self) -> list[int]:
        with self.engine.begin() as conn:
            return migrate(conn)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()
