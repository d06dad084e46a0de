"""What the CLI and the service leave on the host, and what the CLI prints (issue 9, low items).

No service runs here: the CLI's client is replaced by a stand-in where a command needs one.
"""

from __future__ import annotations

import logging
import os
import stat

from typer.testing import CliRunner

from gureum.cli.main import app


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_service_log_is_roots_alone(tmp_path):
    """It names instances, projects and users of every tenant: 0600, even where it was made
    world-readable before (by an older version, or a umask of 022)."""
    from gureum.cli.system import service_log_handler

    log = tmp_path / "service.log"
    handler = service_log_handler(log)
    handler.close()
    assert mode(log) == 0o600
    os.chmod(log, 0o644)
    handler = service_log_handler(log)
    try:
        handler.emit(logging.makeLogRecord({"msg": "hello"}))
    finally:
        handler.close()
    assert mode(log) == 0o600 and "hello" in log.read_text()


class _ExportingClient:
    """Stands in for the API client: an export writes a few bytes."""

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def export(self, name, f, memory=False):
        f.write(b"archive of " + name.encode())
        return 16


def test_backup_archives_are_written_0600(tmp_path, monkeypatch):
    """An archive holds the VM's whole disk (and with --memory its RAM): the owner's alone,
    whatever the umask, also when it replaces a file that was readable by others."""
    monkeypatch.setattr("gureum.cli.recovery.Client", _ExportingClient)
    target = tmp_path / "web1.gbk"
    old = os.umask(0o022)
    try:
        target.write_bytes(b"old")
        os.chmod(target, 0o644)
        (tmp_path / "web1.gbk.partial").write_bytes(b"")
        os.chmod(tmp_path / "web1.gbk.partial", 0o666)
        res = CliRunner().invoke(app, ["backup", "export", "web1", str(target)])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert target.read_bytes() == b"archive of web1" and mode(target) == 0o600
    assert not (tmp_path / "web1.gbk.partial").exists()
