"""The CLI speaks to the API only through the client's methods, and prints every answer one
way: a table (or a line) for people, the answer as it is with ``-o json`` (issue 10, item 5).

The commands run here against the real app in this process (``inprocess.py``): no VM, no
socket, a real store."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import gureum.cli
from gureum.cli.main import app
from gureum.cli.tenancy import QUOTAS
from gureum.client.client import path
from gureum.model.tenancy import QUOTA_FIELDS
from tests.unit.inprocess import cli_against, put_image, service

CLI = Path(gureum.cli.__file__).parent
# The real client, on the in-process app, passes its timeouts as it does to a real service.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def test_no_cli_module_builds_a_url():
    """Paths are the client's business: a string that starts with /v1 (plain or f-string)
    anywhere in cli/ is a URL built by hand."""
    found = []
    for module in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.JoinedStr) and node.values:
                node = node.values[0]
            if isinstance(node, ast.Constant) and str(node.value).startswith("/v1"):
                found.append(f"{module.name}:{node.lineno}")
    assert not found, f"URLs built in cli/: {found}"


def leaves():
    def walk(cmd, words):
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, [*words, name])
        if not getattr(cmd, "commands", None):
            yield " ".join(words), cmd

    yield from walk(get_command(app), [])


def test_every_command_takes_o_json_or_says_why_not():
    said_why = {"serve", "agent", "console", "completion", "ssh", "ssh-proxy"}
    for words, cmd in leaves():
        options = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if words in said_why:
            assert "-o" not in options and "-o json" in (cmd.help or ""), words
        else:
            assert {"-o", "--output"} <= options, f"`gureum {words}` takes no -o json"


def test_the_quota_options_are_the_models_quotas():
    fields = [q.field for q in QUOTAS]
    assert fields[: len(QUOTA_FIELDS)] == list(QUOTA_FIELDS)
    assert fields[len(QUOTA_FIELDS) :] == ["cpu_limit", "memory_limit_mib"]


def test_a_name_never_adds_to_the_path():
    assert path("instances", "web1") == "/v1/instances/web1"
    assert path("instances", "web1?force=true") == "/v1/instances/web1%3Fforce%3Dtrue"
    assert path("instances", "../users", "exec") == "/v1/instances/..%2Fusers/exec"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    with service(tmp_path) as http:
        cli_against(monkeypatch, http)
        runner = CliRunner()

        def run(*args: str, code: int = 0) -> str:
            res = runner.invoke(app, list(args), env={"COLUMNS": "200"})
            assert res.exit_code == code, f"{args}: {res.output}"
            return res.stdout

        run.http = http  # type: ignore[attr-defined]
        yield run


def test_tenancy_commands_print_tables_and_json(cli):
    assert "project team-a created" in cli("project", "create", "team-a", "--max-cpus", "4")
    project = json.loads(cli("project", "quota", "team-a", "--max-memory", "2G", "-o", "json"))
    assert project["quotas"]["max_memory_mib"] == 2048 and project["quotas"]["max_cpus"] == 4
    assert "cpus 4, memory 2048M" in cli("project", "list")
    cli("user", "create", "alice")
    assert "alice is a viewer of team-a" in cli(
        "project", "member", "add", "team-a", "alice", "--role", "viewer"
    )
    shown = json.loads(cli("project", "show", "team-a", "-o", "json"))
    assert shown["members"] == [{"user": "alice", "role": "viewer"}]
    token = json.loads(cli("token", "create", "--name", "ci", "--user", "alice", "-o", "json"))
    assert token["token"].startswith("gur_")
    assert "revoked" in cli("token", "revoke", token["id"])
    assert json.loads(cli("user", "list", "-o", "json"))[0]["name"] == "alice"
    usage = json.loads(cli("project", "usage", "team-a", "-o", "json"))
    assert usage["allocated"]["instances"] == 0
    rows = json.loads(cli("audit", "list", "--action", "POST /v1/projects", "-o", "json"))
    assert [r["result"] for r in rows] == [201]
    assert "superuser" in json.loads(cli("whoami", "-o", "json"))


def test_project_tables_show_the_control_group_limits(cli):
    """Issue 11: a project made with --cpu-limit 1.5 --memory-limit 1G showed `unlimited` in
    every table (only -o json had them)."""
    made = cli("project", "create", "team-a", "--cpu-limit", "1.5", "--memory-limit", "1G")
    assert made.strip() == "project team-a created: cpu limit 1.5 cores, memory limit 1024M"
    assert "team-a (admin): cpu limit 1.5 cores, memory limit 1024M" in cli(
        "project", "show", "team-a"
    )
    quota = cli("project", "quota", "team-a", "--max-cpus", "4", "--max-disk", "100G")
    assert quota.strip() == "team-a: cpus 4, disk 100G, cpu limit 1.5 cores, memory limit 1024M"
    assert "cpus 4, disk 100G, cpu limit 1.5 cores, memory limit 1024M" in cli("project", "list")
    assert cli("project", "create", "team-b").strip() == "project team-b created: unlimited"


def test_security_group_commands(cli):
    cli("secgroup", "create", "web")
    group = json.loads(
        cli("secgroup", "rule", "add", "web", "--ingress", "tcp/80", "--from", "0.0.0.0/0",
            "-o", "json")
    )  # fmt: skip
    rule = group["rules"][-1]
    assert rule["port_from"] == 80 and rule["cidr"] == "0.0.0.0/0"
    assert rule["id"] in cli("secgroup", "show", "web")
    assert f"rule {rule['id']} removed from web" in cli("secgroup", "rule", "remove", "web",
                                                        rule["id"])  # fmt: skip
    assert "web" in cli("secgroup", "list")
    assert json.loads(cli("secgroup", "delete", "web", "-o", "json"))["name"] == "web"
    assert json.loads(cli("secgroup", "list", "-o", "json")) == []


def test_image_commands_and_verify_follows_an_operation(cli, tmp_path):
    kernel = put_image(cli.http.svc, tmp_path)
    assert "tiny" in cli("image", "list")
    assert "sha256" in cli("image", "show", "tiny")
    assert cli("image", "verify", "tiny").strip() == "tiny: ok"
    kernel.write_bytes(b"altered")
    assert "BROKEN" in cli("image", "verify", "tiny", code=1)
    res = json.loads(cli("image", "verify", "tiny", "-o", "json", code=1))
    assert res["ok"] is False and "checksum" in res["problems"][0]
    ops = cli.http.svc.ops.list(limit=3)  # an image's operations belong to no project
    assert [o.kind for o in ops] == ["image-verify"] * 3
    assert "image-verify tiny: succeeded" in cli("operation", "show", ops[0].id)
    assert "checking kernel" in cli("operation", "show", ops[0].id)
    assert "image tiny deleted" in cli("image", "delete", "tiny")


def test_lists_say_when_there_is_nothing(cli):
    assert cli("list") == ""  # the hint goes to stderr
    assert json.loads(cli("list", "-o", "json")) == []
    assert json.loads(cli("network", "list", "-o", "json")) == []


def test_backup_verify_fails_an_archive_that_is_not_whole(cli, tmp_path):
    bad = tmp_path / "bad.gbk"
    bad.write_bytes(b"hello, this is not a backup\n" * 1000)
    out = cli("backup", "verify", str(bad), code=1)
    assert out.startswith("FAIL in ") and "not a" in out
    res = json.loads(cli("backup", "verify", str(bad), "-o", "json", code=1))
    assert res["ok"] is False and res["seconds"] >= 0


def test_backup_export_to_stdout_takes_no_json(cli):
    with pytest.raises(Exception, match="-o json needs an archive file"):
        CliRunner().invoke(app, ["backup", "export", "web1", "-", "-o", "json"],
                           catch_exceptions=False)  # fmt: skip


@pytest.mark.parametrize(
    ("kept", "said"),
    [
        ([], "snapshot s1 deleted"),
        (["web2"], "snapshot s1 deleted; its disk data is kept: clone web2 still builds on it"),
        (["a", "web2", "web3"], "snapshot s1 deleted; its disk data is kept: a itself, clone "
                                "web2 and clone web3 still build on it"),
    ],
)  # fmt: skip
def test_snapshot_delete_says_who_still_builds_on_its_disk_data(monkeypatch, kept, said):
    """Issue 11: `snapshot delete a s1` printed "its disk data stays while a build(s) on it"."""
    from tests.unit.test_hostile_cli import _FakeClient, fake_client

    fake_client(monkeypatch)
    answer = {"id": "s-1", "instance_id": "i-1", "name": "s1", "disk_data_kept_for": kept}
    _FakeClient.answers = {"DELETE /v1/instances/a/snapshots/s1": answer}
    res = CliRunner().invoke(app, ["snapshot", "delete", "a", "s1"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert res.stdout == said + "\n"


def test_table_lines_end_without_spaces(cli):
    """Issue 11: rich padded every cell, the last column's too, so each shorter line of a table
    ended in spaces (which a diff, or `grep 'x$'`, trips on)."""
    cli("project", "create", "team-a", "--max-cpus", "4", "--max-memory", "8G", "--max-disk", "1T")
    cli("project", "create", "b")
    cli("user", "create", "alice")
    cli("user", "create", "a-user-with-a-long-name")
    for args in (["project", "list"], ["user", "list"]):
        shown = cli(*args)
        assert shown.count("\n") >= 3, shown  # a header and rows of unequal widths
        for line in shown.splitlines():
            assert line == line.rstrip(), f"{args}: {line!r}"
    lines = cli("project", "list").splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "QUOTAS"]
    assert lines[1].index("admin") == lines[0].index("ROLE")  # still aligned
