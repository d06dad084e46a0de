"""How a real OS is provisioned and reached (issue 12): SSH keys checked as keys, the NoCloud
data cloud-init fetches, its announcement in SMBIOS, the host keys `gureum ssh` trusts, and the
ssh command line the CLI hands to OpenSSH."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.engine.qemu.argv import NOCLOUD_SERIAL, render
from gureum.model.sshkeys import MAX_KEYS, public_key
from gureum.network.metadata import Caller
from gureum.service.core import Services
from tests.unit.fakehost import FakeHost
from tests.unit.fakeworld import fake_api, launch
from tests.unit.inprocess import cli_against
from tests.unit.test_engine_argv import config
from tests.unit.test_metadata_server import get, serving

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ5U/wqN7jpyEI0PoZMdrAuPnutMEuuZNh6mC4KVP8Na"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZ8b7ss3bjU06WMLF4Nzojx4btb4N93gDuMo6Fg2olZ"


def _blob(kind: bytes, body: bytes = b"\0" * 36) -> str:
    return base64.b64encode(len(kind).to_bytes(4, "big") + kind + body).decode()


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "ssh-ed25519",
        "ssh-ed25519 AAAAC3Nza",  # cut short: the blob does not decode to its type
        "ssh-ed25519 not*base64",
        f"ssh-rsa {_blob(b'ssh-ed25519')}",  # says one type, is another
        "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",  # a fingerprint, not a key
        f"{ED25519} one\n{OTHER} two",  # two lines
        "ssh-ed25519 " + "A" * 20000,
    ],
)
def test_what_is_not_a_public_key(text: str) -> None:
    assert public_key(text) is None


def test_a_public_key_is_kept_as_type_and_blob_and_its_comment_on_request() -> None:
    assert public_key(f"  {ED25519} ada@laptop \n") == ED25519
    assert public_key(f"{ED25519} ada@laptop", keep_comment=True) == f"{ED25519} ada@laptop"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Services, FakeHost]]:
    with fake_api(tmp_path, ("debian",)) as world:
        yield world


def _launch(root: TestClient, svc: Services, name: str, **body: object) -> dict:
    return launch(root, svc, name, "debian", **body)


def test_a_launch_with_a_key_that_is_not_one_is_refused_before_anything_is_made(world) -> None:
    root, svc, host = world
    resp = root.post(
        "/v1/instances",
        json={"name": "web", "image": "debian", "ssh_keys": ["-----BEGIN OPENSSH PRIVATE KEY"]},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid-input"
    assert "PRIVATE" not in resp.text  # a pasted secret is never echoed
    assert svc.instances.list() == [] and host.vms == {}


def test_host_keys_are_recorded_the_first_time_and_never_replaced(world) -> None:
    root, svc, host = world
    _launch(root, svc, "web", ssh_keys=[f"{ED25519} ada"])
    early = root.get("/v1/instances/web/ssh")
    assert early.status_code == 409, early.text  # no keys yet: says so, records nothing
    assert "no SSH host keys yet" in early.json()["error"]["message"]
    host.host_keys = [ED25519]
    first = root.get("/v1/instances/web/ssh").json()
    assert first["host_keys"] == [ED25519]
    assert first["user"] == "debian"  # the image's cloud-init default user
    host.host_keys = [OTHER]  # the guest now says otherwise: not believed
    assert root.get("/v1/instances/web/ssh").json()["host_keys"] == [ED25519]
    assert svc.instances.get("web").host_keys == (ED25519,)


def test_the_nocloud_data_is_what_the_store_holds(world) -> None:
    """meta-data as JSON (YAML reads it as is): a hostile hostname or key cannot become YAML."""
    who = Caller("i-1", "web", "127.0.0.7", "52:54:00:00:00:07", (f"{ED25519} a: b",), None)

    async def lookup(network_id: str, ip: str) -> Caller | None:
        return who if ip == "127.0.0.7" else None

    async def fetch() -> tuple[bytes, bytes]:
        async with serving(lookup) as (_, port):
            meta = await get(port, "127.0.0.7", "/nocloud/meta-data")
            user = await get(port, "127.0.0.7", "/nocloud/user-data")
        return meta, user

    meta, user = asyncio.run(fetch())
    assert meta.startswith(b"HTTP/1.1 200")
    body = json.loads(meta.split(b"\r\n\r\n", 1)[1])
    assert body == {"instance-id": "i-1", "local-hostname": "web",
                    "public-keys": [f"{ED25519} a: b"]}  # fmt: skip
    assert user.startswith(b"HTTP/1.1 200") and user.endswith(b"\r\n\r\n")  # empty, not 404


def test_stock_cloud_init_is_told_where_its_data_is_through_smbios() -> None:
    argv = render(config())
    assert argv[argv.index("-smbios") + 1] == f"type=1,serial={NOCLOUD_SERIAL}"
    assert NOCLOUD_SERIAL.startswith("ds=nocloud-net;s=http://169.254.169.254/")


def test_gureum_ssh_gives_openssh_the_guests_keys_user_and_tunnel(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, svc, host = world
    inst = _launch(root, svc, "web", ssh_keys=[ED25519])
    host.host_keys = [ED25519]
    # A stand-in for the ssh binary: records how it was called and its known-hosts file.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    record = tmp_path / "called.json"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\nargs = sys.argv[1:]\n"
        "known = [a.split('=', 1)[1] for a in args if a.startswith('UserKnownHostsFile=')][0]\n"
        f"json.dump({{'args': args, 'known': open(known).read()}}, open({str(record)!r}, 'w'))\n"
        "sys.exit(42)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cli_against(monkeypatch, root)
    res = CliRunner().invoke(app, ["ssh", "web", "-i", "/k/id", "--", "uname", "-a"])
    assert res.exit_code == 42, res.output  # ssh's own exit code
    called = json.loads(record.read_text())
    args, alias = called["args"], f"gureum-{inst['id']}"
    assert called["known"] == f"{alias} {ED25519}\n"
    assert "StrictHostKeyChecking=yes" in args and "GlobalKnownHostsFile=/dev/null" in args
    assert args[args.index("-l") + 1] == "debian"
    assert args[args.index("-i") + 1] == "/k/id"
    proxy = next(a for a in args if a.startswith("ProxyCommand="))
    assert proxy.endswith(f"ssh-proxy {inst['id']}")  # the id, never a name, reaches a shell
    assert args[-3:] == [alias, "uname", "-a"]


@pytest.mark.parametrize(
    ("user_data", "said"),
    [
        ("#cloud-config\nruncmd:\n  - [echo, ok\n", "not valid YAML (line"),
        ("#cloud-config\n- just\n- a list\n", "must be a YAML mapping"),
        ("#cloud-config\n" + "a: b\n" * 20000, "at most 64 KiB"),
    ],
)
def test_user_data_that_cloud_init_would_drop_is_refused_before_anything_is_made(
    world, user_data: str, said: str
) -> None:
    root, svc, host = world
    resp = root.post(
        "/v1/instances", json={"name": "web", "image": "debian", "user_data": user_data}
    )
    assert resp.status_code == 400, resp.text
    assert said in resp.json()["error"]["message"]
    assert svc.instances.list() == [] and host.vms == {}


def test_user_data_that_is_not_cloud_config_is_passed_as_it_is(world) -> None:
    root, svc, _ = world
    script = "#!/bin/sh\necho [not yaml: {\n"
    _launch(root, svc, "web", user_data=script)
    assert svc.instances.get("web").user_data == script


def test_key_pairs_are_kept_named_and_copied_into_the_vms_launched_with_them(world) -> None:
    root, svc, _ = world
    made = root.post("/v1/keypairs", json={"name": "laptop", "public_key": f"{ED25519} ada"})
    assert made.status_code == 201, made.text
    assert made.json()["fingerprint"].startswith("SHA256:")
    assert (
        root.post("/v1/keypairs", json={"name": "laptop", "public_key": OTHER}).status_code == 409
    )
    private = root.post(
        "/v1/keypairs", json={"name": "oops", "public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}
    )
    assert private.status_code == 400 and "PRIVATE" not in private.text
    _launch(root, svc, "web", keypairs=["laptop"], ssh_keys=[OTHER])
    assert svc.instances.get("web").ssh_keys == (OTHER, f"{ED25519} ada")
    assert root.delete("/v1/keypairs/laptop").status_code == 200
    assert [p["name"] for p in root.get("/v1/keypairs").json()] == []
    assert svc.instances.get("web").ssh_keys == (OTHER, f"{ED25519} ada")  # kept by the VM
    unknown = root.post("/v1/instances", json={"name": "w2", "image": "debian",
                                               "keypairs": ["laptop"]})  # fmt: skip
    assert unknown.status_code == 404, unknown.text
    assert [i.name for i in svc.instances.list()] == ["web"]  # nothing made for it


def test_a_vm_without_a_key_is_refused_by_gureum_ssh_with_the_reason(world) -> None:
    root, svc, host = world
    _launch(root, svc, "web")
    host.host_keys = [ED25519]
    resp = root.get("/v1/instances/web/ssh")
    assert resp.status_code == 409, resp.text
    assert "without an SSH key" in resp.json()["error"]["message"]


def test_ssh_key_takes_a_pub_file_as_the_issue_shows(world, tmp_path, monkeypatch) -> None:
    root, svc, _ = world
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(f"{ED25519} from-a-file\n")
    cli_against(monkeypatch, root)
    res = CliRunner().invoke(app, ["launch", "debian", "--name", "web", "--ssh-key", str(pub),
                                   "--no-wait"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert svc.instances.get("web").ssh_keys == (f"{ED25519} from-a-file",)
    res = CliRunner().invoke(app, ["launch", "debian", "--name", "w2", "--ssh-key", "nope"])
    assert res.exit_code != 0
    assert getattr(res.exception, "code", None) == "usage"  # main() exits 2 for it
    assert "neither a public key line nor a file" in str(res.exception)


def test_ssh_tunnels_are_bounded_and_audited(world) -> None:
    """Review of issue 12: a guest that never closes its end held two of the service's
    descriptors per tunnel, without bound, and tunnels were not in the audit."""
    from gureum.errors import RateLimited
    from gureum.service.guest_ssh import MAX_TUNNELS_PER_PROJECT

    root, svc, _ = world
    _launch(root, svc, "web", ssh_keys=[ED25519])
    with root.websocket_connect("/v1/instances/web/ssh/tunnel") as ws:
        refused = ws.receive_json()  # the fake host has no guest to connect to
    assert "no guests" in refused["error"]["message"]
    entry = next(e for e in root.get("/v1/audit").json() if e["action"].startswith("SSH "))
    assert (entry["action"], entry["target"], entry["result"]) == (
        "SSH /v1/instances/{ref}/ssh/tunnel", "web", 409)  # fmt: skip
    project = svc.instances.get("web").project_id
    held = [svc.ssh.tunnels.take(project) for _ in range(MAX_TUNNELS_PER_PROJECT)]
    with pytest.raises(RateLimited):
        svc.ssh.tunnels.take(project)
    held[0]()
    svc.ssh.tunnels.take(project)  # a slot freed is a slot taken


def test_a_pasted_argument_too_long_for_a_file_name_is_a_usage_error_not_echoed() -> None:
    """A key pasted where a .pub path was expected can be too long a file name: the OS error
    named it in full (the review's test of a pasted private key failed now and then so)."""
    from gureum.cli.instances import public_keys

    pasted = "b3BlbnNzaC1rZXktdjEAAAAA" * 20  # 480 characters, no '/': one path component
    with pytest.raises(Exception) as err:
        public_keys(pasted, "--ssh-key")
    assert getattr(err.value, "code", None) == "usage"
    assert pasted not in str(err.value)


def test_an_instance_takes_a_bounded_number_of_keys(world) -> None:
    """All of an instance's keys and its user-data travel in one metadata answer to a joined
    host: 33 keys are refused before anything is made; 32 are taken."""
    root, svc, _ = world

    def key(i: int) -> str:
        blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + i.to_bytes(32, "big")
        return f"ssh-ed25519 {base64.b64encode(blob).decode()}"

    many = [key(i) for i in range(MAX_KEYS + 1)]
    refused = root.post("/v1/instances", json={"name": "w", "image": "debian",
                                               "ssh_keys": many})  # fmt: skip
    assert refused.status_code == 400 and f"at most {MAX_KEYS} SSH keys" in refused.text
    assert svc.instances.list() == []
    _launch(root, svc, "w", ssh_keys=many[:MAX_KEYS])
    assert len(svc.instances.get("w").ssh_keys) == MAX_KEYS
