"""The store's connection: one SQLAlchemy engine, SQLite in WAL mode by default.

A single host needs nothing more than SQLite. PostgreSQL (``database_url`` in the config) is
for when several API processes or an operator's own tooling share one store; the schema and
every query are the same on both (``store/migrations.py`` keeps to SQL both accept).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from gureum.errors import InvalidInput, Unavailable
from gureum.store.migrations import migrate
from gureum.store.schema import instance_leases

log = logging.getLogger(__name__)


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": 10},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers run while a writer commits; busy_timeout makes concurrent writers
        # wait instead of failing with "database is locked".
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def url_engine(url: str) -> Engine:
    """An engine for a ``postgresql://`` URL (psycopg 3 is the driver either way)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"database_url is not a database URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise InvalidInput(
            f"database_url must be a postgresql:// URL, not {parsed.drivername!r} "
            "(leave it unset for the built-in SQLite store)"
        )
    parsed = parsed.set(drivername="postgresql+psycopg")
    # pool_pre_ping: a server restart must not turn into errors on the next requests.
    return create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def redact(url: str) -> str:
    """The URL as it may be shown: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


LOCK_WAIT_MS = 5000  # hold_lock's wait for another holder, at most


def hold_lock(conn: Connection, key: str) -> None:
    """Hold ``key`` until this transaction ends: a transaction of any process that takes the
    same key waits for it, and then sees what it wrote. On PostgreSQL an advisory lock on a
    hash of the key (two keys sharing a hash merely wait for each other); SQLite has one
    writer at a time, which a no-op write takes now rather than at the first real write."""
    if conn.dialect.name == "postgresql":
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        # Bounded: a holder that froze (its machine paused, cut off) must not stop this
        # process, whose store calls run on its event loop, for longer; then `unavailable`.
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:n)"), {"n": number})
    else:
        write_lock_first(conn)


def write_lock_first(conn: Connection) -> None:
    """On SQLite, take the write lock before reading (a no-op write does): writers are
    serialized, and what one reads is what it writes over. No-op on PostgreSQL."""
    if conn.dialect.name == "sqlite":
        conn.execute(update(instance_leases).where(instance_leases.c.until < 0).values(until=0))


class Database:
    """Owns the engine; repositories borrow connections from it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # PostgreSQL: autocommit, no BEGIN/COMMIT round trips. SQLite's driver opens no
        # transaction for a SELECT anyway, and switching its isolation level costs a PRAGMA.
        pg = engine.dialect.name == "postgresql"
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT") if pg else engine

    @classmethod
    def open_sqlite(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(sqlite_engine(path))
        db.migrate()
        for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if part.exists():  # tokens' hashes, users, audit: root's alone
                os.chmod(part, 0o600)
        return db

    @classmethod
    def open_url(cls, url: str) -> Database:
        db = cls(url_engine(url))
        try:
            db.migrate()
        except OperationalError as exc:
            db.close()
            raise Unavailable(f"cannot reach the database at {redact(url)}: {exc.orig}") from exc
        return db

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> list[int]:
        with self.engine.begin() as conn:
            return migrate(conn)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self._reachable(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for one SELECT, outside any transaction: a single statement is its own
        consistent snapshot either way, and on PostgreSQL this saves two of the three round
        trips of every read (the API's list and show are nothing but reads)."""
        with self._reachable(), self._reader.connect() as conn:
            yield conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A store that is down or busy is `unavailable` (503: try again), not an internal
        error. On SQLite an OperationalError is mostly a bug (no such table...): only a lock
        held past the busy timeout is the store being busy."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            if self.backend == "postgresql":
                # The detail (socket path, host, port) is the operator's, not the caller's.
                log.warning("store unreachable: %s", _first_line(exc))
                raise Unavailable("the store is not answering; try again shortly") from exc
            if "locked" in str(exc.orig):
                raise Unavailable("the store is busy (database is locked); try again") from exc
            raise

    def close(self) -> None:
        self.engine.dispose()
