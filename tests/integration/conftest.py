"""Integration harness: real `gureum serve` processes, real QEMU, the tiny image.

Each service runs in its own short home under /tmp (unix socket paths must stay under 108
bytes). Debian packages are cached in the repository's .gureum/ folder so a second run does not
download again. Teardown deletes every VM, stops the service and then checks that no QEMU of
that home is left, whatever the test did.

A test that fails keeps its VMs' QEMU and serial logs and its services' logs in
.gureum/failed-tests/<test>/ (``kept_logs.py``); its report names the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gureum.client.client import ApiError, Client, Endpoint
from gureum.engine.qemu import process
from gureum.network import netns
from gureum.sys import procs
from tests.integration.kept_logs import Keeper, folder_name
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".gureum" / "cache"
FAILED = REPO / ".gureum" / "failed-tests"  # logs of failed tests, one folder each
KEEPER = Keeper()


class _Client(Client):
    """A client that stashes a VM's logs before deleting it (a failing test keeps them)."""

    def __init__(self, endpoint: Endpoint, home: Path) -> None:
        super().__init__(endpoint)
        self._gureum_home = home

    def delete(self, ref: str, **kwargs: object) -> dict:  # type: ignore[type-arg, override]
        with contextlib.suppress(Exception):  # keeping logs never fails a test
            KEEPER.going(self._gureum_home, [self.instance(ref)["id"]])
        return super().delete(ref, **kwargs)  # type: ignore[arg-type]


class Service:
    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "GUREUM_HOME": str(home),
            "GUREUM_CACHE_DIR": str(CACHE),
            "GUREUM_STOP_TIMEOUT": "20",
            "GUREUM_RECONCILE_INTERVAL": "1",
            **(env or {}),
        }
        self.env.pop("GUREUM_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ---------------------------------------------------------------------------------
    def start(self) -> None:
        log = open(self.home / "serve.out", "ab")  # noqa: SIM115 - lives as long as the service
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gureum.cli.main", "serve"],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        KEEPER.homes.add(self.home)
        wait_for(self._answers, 30, interval=0.05, what="the service answers")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"service exited: {(self.home / 'serve.out').read_text()[-2000:]}")
        with contextlib.suppress(ApiError), self.client() as c:
            c.request("GET", "/v1/version")
            return True
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)

    # -- access ----------------------------------------------------------------------------------
    def client(self) -> Client:
        return _Client(self.endpoint(), self.home)

    def endpoint(self) -> Endpoint:
        return Endpoint("http://gureum", self.home / "gureum.sock")

    def cli(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        if args[:1] == ("delete",) and len(args) > 1 and self.proc is not None:
            with contextlib.suppress(Exception), self.client() as c:
                KEEPER.going(self.home, [c.instance(args[1])["id"]])
        proc = subprocess.run(
            [sys.executable, "-m", "gureum.cli.main", *args],
            env=self.env, input=input.decode() if input is not None else None,
            capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"gureum {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
            )
        return proc

    def qemu_pids(self) -> list[int]:
        return process.find_by_marker(str(self.home / "run") + "/")

    def launch(self, name: str, **kw: object) -> dict:  # type: ignore[type-arg]
        with self.client() as c:
            res = c.launch(name, "tiny", **kw)  # type: ignore[arg-type]
            op = c.wait(res["operation"]["id"], timeout=240)
        return op["result"]["instance"]

    def running(self, *names: str) -> None:
        """Start any of these VMs that is stopped or crashed: a test sharing its module's VMs
        starts from them running, whatever an earlier test that failed half-way left."""
        with self.client() as c:
            states = {i["name"]: i["state"] for i in c.instances()}
        for name in names:
            if states.get(name) in ("stopped", "crashed"):
                self.cli("start", name)

    def exec(self, name: str, *argv: str) -> str:
        with self.client() as c:
            res = c.exec(name, list(argv))
        assert res["exit_code"] == 0, res
        return res["stdout"].decode()

    def cleanup(self, *, killed: bool = False) -> None:
        """Delete every VM, stop the service, and make sure nothing of this home survives.
        ``killed``: the test killed the service on purpose, so what it left (its networks'
        namespaces, dnsmasq, its projects' control groups) is removed without failing the
        test."""
        KEEPER.going(self.home)  # a test failing in teardown still shows what its VMs said
        KEEPER.homes.discard(self.home)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception), Client(self.endpoint()) as c:
                for inst in c.instances():
                    c.delete(inst["id"], force=True)
        self.stop()
        leftovers = self.qemu_pids()
        for pid in leftovers:
            procs.kill(pid)
        namespaces = netns.ours(self.home)
        dnsmasq = [
            p for p in _pids_named("dnsmasq") if any(str(self.home) in a for a in procs.cmdline(p))
        ]
        for pid in dnsmasq:
            procs.kill(pid)
        for name in namespaces:
            subprocess.run(["ip", "netns", "delete", name], check=False)
        group = f"gureum-{netns.home_tag(self.home)}"
        cgroups = Path("/sys/fs/cgroup")
        groups = [str(p) for p in (cgroups / group, *cgroups.glob(f"*/{group}")) if p.is_dir()]
        if killed:  # its projects' groups (empty: their VMs are gone), deepest first
            for top in groups:
                for sub in sorted(Path(top).glob("**/"), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
        # A container's root mounted in the home: never walked by rmtree (its image is below).
        # Only gureum's own (a test may mount its own under the home, and unmount it after).
        mounts = _mounts_under(self.home / "instances")
        for point in reversed(mounts):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.home, ignore_errors=True)
        assert not leftovers, f"QEMU processes left behind: {leftovers}"
        assert killed or not namespaces, f"network namespaces left behind: {namespaces}"
        assert killed or not dnsmasq, f"dnsmasq processes left behind: {dnsmasq}"
        assert killed or not groups, f"control groups left behind: {groups}"
        assert not mounts, f"mounts left behind: {mounts}"


def _mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    return [p for p in points if p.startswith(f"{folder}/")]


def _pids_named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def new_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="gureum-it-", dir="/tmp"))


@contextlib.contextmanager
def running_service(env: dict[str, str] | None = None) -> Iterator[Service]:
    svc = Service(new_home(), env)
    try:
        svc.start()
        svc.cli("image", "build", "tiny", timeout=900)
        yield svc
    finally:
        svc.cleanup()


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    """One service for most integration tests; tests give their VMs unique names."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with running_service() as svc:
        yield svc


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private key made for the tests (its public half beside it, .pub): `gureum ssh -i`."""
    folder = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@gureum",
                    "-f", str(folder / "id")], check=True)  # fmt: skip
    return folder / "id"


# -- a failed test keeps its logs ---------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    KEEPER.begin()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    dest = FAILED / folder_name(item.nodeid)
    kept = KEEPER.keep(dest)
    if kept:
        listing = "\n".join(f"  {p.relative_to(dest)}" for p in kept)
        report.sections.append(("kept logs", f"{dest}/\n{listing}"))


def pytest_sessionfinish() -> None:
    KEEPER.close()
