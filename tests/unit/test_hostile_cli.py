"""What the CLI and the service leave on the host, and what the CLI prints (issue 9, low items).

No service runs here: the CLI's client is replaced by a stand-in where a command needs one.
"""

from __future__ import annotations

import logging
import os
import stat

from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.client.client import Client


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


# -- what the CLI prints: data as it is, never read as markup or emoji codes ---------------------
FINGERPRINT = "12:AB:CD:EF:00:CL:AB:ok:FF"
TRICKY = "[red]x[/red] :smile: [bold]"


def test_fingerprints_and_data_are_printed_as_they_are():
    from gureum.cli.output import bold, err, out, table

    with out.capture() as seen:
        out.print(f"certificate SHA256 {FINGERPRINT}")
        out.print(bold(TRICKY, f" {FINGERPRINT}"))
        table(["A"], [[TRICKY], [FINGERPRINT]])
    text = seen.get()
    assert text.count(FINGERPRINT) == 3 and text.count(TRICKY) == 2, text
    with err.capture() as seen:
        err.print(TRICKY)
    assert TRICKY in seen.get()


class _FakeClient(Client):
    """The API client's stand-in: its methods are the real ones, and each request they make is
    answered from a table."""

    answers: dict[str, object] = {}

    def __init__(self, *_, **__):
        pass

    def close(self):
        pass

    def request(self, method, path, **_):
        return self.answers[f"{method} {path}"]


def fake_client(monkeypatch, cls=_FakeClient, *modules):
    """Every client the CLI makes (in ``output.call``, and in ``modules``) is ``cls``."""
    for module in ("gureum.cli.output", *modules):
        monkeypatch.setattr(f"{module}.Client", cls)


def test_remote_add_prints_the_fingerprint_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("GUREUM_CONFIG", str(tmp_path / "remotes.json"))
    monkeypatch.setattr("gureum.cli.tenancy._server_certificate", lambda url: "PEM")
    monkeypatch.setattr("gureum.api.tls.fingerprint", lambda pem: FINGERPRINT)
    fake_client(monkeypatch, _FakeClient, "gureum.cli.tenancy")
    _FakeClient.answers = {"GET /v1/version": {"version": "x", "api": "v1"}}
    res = CliRunner().invoke(
        app, ["remote", "add", "lab", "https://h:8443", "--token", "gur_x"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert f"certificate SHA256 {FINGERPRINT} pinned" in res.output, res.output


def test_audit_rows_are_printed_as_they_are(monkeypatch):
    fake_client(monkeypatch)
    row = {"at": 0, "user": "anonymous", "project": None, "action": f"GET /v1/{TRICKY}",
           "target": FINGERPRINT, "result": 401}  # fmt: skip
    _FakeClient.answers = {"GET /v1/audit": [row]}
    res = CliRunner().invoke(app, ["audit", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert TRICKY in res.output and FINGERPRINT in res.output, res.output


def test_project_quota_takes_max_forwards(monkeypatch):
    sent = {}

    class Recording(_FakeClient):
        def request(self, method, path, **kw):
            sent.update(kw.get("json") or {})
            return {"quotas": {"max_forwards": 4}}

    fake_client(monkeypatch, Recording)
    res = CliRunner().invoke(app, ["project", "quota", "team-a", "--max-forwards", "4"])
    assert res.exit_code == 0, res.output
    assert sent == {"max_forwards": 4} and "forwards 4" in res.output
