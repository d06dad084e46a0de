"""A private PostgreSQL server for the tests, from Debian's postgresql-15 package.

It runs as the ``postgres`` user from a folder of its own, listens on a unix socket in that
folder only (no TCP port), trusts local connections, and skips fsync: a throwaway cluster.
Each test gets a fresh database of its own (``new_database``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="gureum-pg-"))
        self.data = self.folder / "data"
        self._names = itertools.count(1)
        self._started = False

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            [str(a) for a in argv], user="postgres", group="postgres", check=True,
            capture_output=True, text=True, timeout=120, cwd=self.folder,
        )  # fmt: skip

    def start(self) -> None:
        pw = pwd.getpwnam("postgres")
        os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        os.chmod(self.folder, 0o755)
        self._as_postgres(BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                          "--no-sync", "-E", "UTF8")  # fmt: skip
        self.resume()
        self._started = True
        atexit.register(self.stop)  # an owner that forgets (or dies of an exception) leaks none

    def pause(self) -> None:
        """Stop the server process, keeping its data: the store goes away under its users."""
        self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        options = f"-k {self.folder} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-o", options, "-l",
                          self.folder / "server.log", "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(subprocess.SubprocessError):
                self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """A URL to an empty database nobody else uses."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host={self.folder} user=postgres dbname=postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
