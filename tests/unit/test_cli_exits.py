"""What the CLI prints and exits with when something fails, and how it prints for scripts
(issue 11, items 4, 6 and 7): ``main()`` runs here as the ``gureum`` command does, against the
real app in this process (``inprocess.py``), its VMs on a ``FakeHost``."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from gureum import __version__
from gureum.api.app import create_app
from gureum.cli.main import main
from gureum.config import load_config
from gureum.errors import CommandNotFound
from gureum.service.core import Services
from gureum.service.tenancy import SUPERUSER
from tests.unit.inprocess import cli_against, put_image, service
from tests.unit.test_creation_rollback import build

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def gureum(capsys: pytest.CaptureFixture[str]) -> Run:
    """``gureum ARGS``: its exit code, stdout and stderr (stdout is not a terminal here)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        res = capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else 1), res.out, res.err

    return run


@pytest.fixture
def fake_vms(tmp_path, monkeypatch) -> Iterator[TestClient]:
    """The app on a FakeHost, with the image ``tiny``: VMs launch and ``exec`` answers."""
    svc, host = build(tmp_path)
    with TestClient(create_app(svc)) as http:
        http.host = host  # type: ignore[attr-defined]  # the test reaches the fake through it
        cli_against(monkeypatch, http)
        yield http
    svc.close()


def test_a_command_the_guest_cannot_start_exits_127_as_a_shell_does(gureum, fake_vms):
    """Item 4: it exited 1 with `invalid-input`."""
    code, _, err = gureum("launch", "tiny", "--name", "web1", "-o", "json")  # a fake boots in 0 s
    assert code == 0, err

    async def cannot_start(*_: object) -> None:
        raise CommandNotFound(
            "guest agent: guest-exec: Failed to execute child process “nope” (No such file)"
        )

    fake_vms.host.exec = cannot_start  # type: ignore[attr-defined]  # the fake, set above
    code, out, err = gureum("exec", "web1", "--", "nope", "-x")
    assert code == 127 and out == ""
    assert err.startswith("error: cannot run 'nope' in web1: ") and "No such file" in err
    assert err.rstrip().endswith("[command-not-found]")


def test_usage_errors_print_like_every_other_failure_and_exit_2(gureum):
    """Item 6: click printed them in a box, over several lines."""
    for args, said in [
        (["list", "--bogus"], "No such option: --bogus"),
        (["show"], "Missing argument 'name'"),
        (["launch", "tiny", "--cpus", "two"], "Invalid value for '--cpus'"),
        (["list", "-o", "yaml"], "'yaml' is not one of 'table', 'json'"),
        (["completion", "fish"], "'fish' is not one of 'bash', 'zsh'"),
    ]:
        code, out, err = gureum(*args)
        assert code == 2 and out == "", args
        assert err.startswith("error: ") and said in err and err.endswith(" [usage]\n"), err
        assert err.count("\n") == 1 and "╭" not in err, err
        assert f"(see `gureum {args[0]} --help`)" in err


def test_exit_codes_say_not_found_refused_and_unreachable(gureum, tmp_path, monkeypatch):
    """Item 6: every failure exited 1."""
    monkeypatch.setenv("GUREUM_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("GUREUM_URL", raising=False)
    monkeypatch.delenv("GUREUM_REMOTE", raising=False)
    code, _, err = gureum("list")
    assert code == 5 and "service is not running" in err and err.rstrip().endswith("[unavailable]")
    code, _, err = gureum("--remote", "nowhere", "list")
    assert code == 3 and err.rstrip().endswith("[not-found]")
    with service(tmp_path) as http:
        cli_against(monkeypatch, http)
        code, _, err = gureum("show", "ghost")
        assert code == 3 and err.rstrip().endswith("[not-found]"), err
        assert gureum("project", "create", "team-a")[0] == 0
        code, _, err = gureum("project", "create", "team-a")
        assert code == 4 and err.rstrip().endswith("[conflict]"), err
        put_image(http.svc, tmp_path)  # type: ignore[attr-defined]  # set by service()
        code, _, err = gureum("image", "verify", "tiny", "--bogus")
        assert code == 2


def test_version_agrees_with_the_api(gureum, tmp_path, monkeypatch):
    code, out, _ = gureum("--version")
    assert code == 0 and out == f"gureum {__version__}\n"
    with service(tmp_path) as http:
        assert out.split()[1] == http.get("/v1/version").json()["version"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_complete_commands(gureum, shell):
    code, out, _ = gureum("completion", shell)
    assert code == 0 and "_GUREUM_COMPLETE" in out and "_gureum_completion" in out
    env = {"_GUREUM_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": "gureum snapsh",
           "COMP_WORDS": "gureum snapsh", "COMP_CWORD": "1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "gureum.cli.main"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "snapshot" in res.stdout, res.stderr


def test_tables_in_a_pipe_are_whole_and_their_headers_unique(gureum, tmp_path, monkeypatch):
    """Item 7: not a terminal, rich wrapped at 80 columns and cut cells with an ellipsis, and
    `snapshot list` had MEMORY twice."""
    long_name = "a-snapshot-with-a-rather-long-name-" + "x" * 60
    snap = {"name": long_name, "memory": True, "consistency": "crash-consistent", "cpus": 2,
            "memory_mib": 1000, "disk_gib": 4.0, "size_bytes": 123456789, "created_at": None,
            "depended_on_by": ["clone-one-with-a-long-name", "clone-two-with-a-long-name"],
            }  # fmt: skip
    monkeypatch.setattr("gureum.client.client.Client.snapshots", lambda self, ref: [snap])
    monkeypatch.delenv("COLUMNS", raising=False)
    with service(tmp_path) as http:
        cli_against(monkeypatch, http)
        code, out, err = gureum("snapshot", "list", "web1")
    assert code == 0, err
    header, row = out.splitlines()
    assert len(header.split()) == len(set(header.split())), header
    assert row.split()[0] == long_name and "…" not in out
    assert "clone-one-with-a-long-name, clone-two-with-a-long-name" in row


def test_a_user_in_no_project_is_refused_and_told_how_to_get_in(gureum, tmp_path, monkeypatch):
    """Issue 11: `gureum --remote lab list` for a user in no project answered `invalid-input`
    (exit 1), as if the request were wrong; it is a refusal (403, exit 4) that says the way in."""
    svc = Services.build(load_config(tmp_path, env={"GUREUM_MEMORY_RESERVE_MIB": "0"}))
    svc.tenancy.ensure_default()
    svc.tenancy.create_user("alice")
    secret = svc.tenancy.create_token(SUPERUSER, "alice", "laptop")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(svc, "tcp"), headers=headers) as http:
        resp = http.get("/v1/instances")
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
        cli_against(monkeypatch, http)
        code, out, err = gureum("list")
    svc.close()
    assert code == 4 and out == "", err
    assert err.startswith("error: user alice is not a member of any project")
    assert "`gureum project member add PROJECT alice`" in err and err.endswith("[forbidden]\n")


def test_values_the_cli_refuses_itself_are_usage_errors(gureum, tmp_path, monkeypatch):
    """Issue 11: `project quota X --unset max_disk_bytes` exited 1 with `[invalid-input]`,
    though nothing was sent: a value the command line got wrong is `usage`, exit 2."""
    monkeypatch.setenv("GUREUM_HOME", str(tmp_path / "nothing-here"))  # nothing is sent
    monkeypatch.delenv("GUREUM_URL", raising=False)
    monkeypatch.delenv("GUREUM_REMOTE", raising=False)
    for args, said in [
        (["project", "quota", "x", "--unset", "max_disk_bytes"], "--unset takes one of"),
        (["project", "create", "x", "--max-memory", "2X"], "unknown unit 'X'"),
        (["launch", "tiny", "--name", "a", "--disk", "lots"], "disk must be a size"),
        (["launch", "tiny", "--name", "a", "--memory", "1.5K"], "a whole number of MiB"),
        (["launch", "tiny", "--name", "a", "--user-data", str(tmp_path / "none")], "not a file"),
        (["resize", "a", "--memory", "-1G"], "memory must be a size"),
        (["token", "create", "--name", "t", "--expires", "soon"], "--expires must be"),
        (["audit", "list", "--since", "ages"], "--since must be"),
        (["clone", "web1", "web2"], "clone needs VM/SNAPSHOT"),
        (["backup", "export", "web1", "-", "-o", "json"], "-o json needs an archive file"),
        (["backup", "verify", str(tmp_path / "none")], "is not a file"),
        (["remote", "add", "lab", "http://h:8443", "--token", "t"], "a remote is https://"),
    ]:
        code, out, err = gureum(*args)
        assert code == 2 and out == "", (args, err)
        assert err.startswith("error: ") and said in err and err.endswith(" [usage]\n"), err


def test_remote_add_unreachable_or_untrusted_exits_5(gureum, tmp_path, monkeypatch):
    """Issue 11: both exited 1 (`invalid-input`); docs/cli.md says 5, `unavailable` and
    `untrusted`. Neither adds the remote."""
    remotes = tmp_path / "remotes.json"
    monkeypatch.setenv("GUREUM_CONFIG", str(remotes))
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = gureum("remote", "add", "lab", f"https://127.0.0.1:{port}", "--token", "t")
    assert code == 5 and err.startswith(f"error: cannot reach https://127.0.0.1:{port}: "), err
    assert err.endswith("[unavailable]\n"), err
    monkeypatch.setattr("gureum.cli.tenancy._server_certificate", lambda url: "PEM")
    monkeypatch.setattr("gureum.api.tls.fingerprint", lambda pem: "AB:CD")
    code, _, err = gureum(
        "remote", "add", "lab", "https://h:8443", "--token", "t", "--fingerprint", "AB:CE"
    )
    assert code == 5 and "fingerprint is AB:CD, not the one given" in err, err
    assert err.endswith("[untrusted]\n"), err
    assert not remotes.exists()
    code, _, err = gureum("remote", "use", "lab")
    assert code == 3 and err == "error: no remote named 'lab' [not-found]\n", err
