"""The integration harness keeps a failed test's logs (tests/integration/kept_logs.py): what it
copies, from where, and what it keeps of VMs deleted during the test."""

from __future__ import annotations

from pathlib import Path

from tests.integration.kept_logs import Keeper, copy_logs, folder_name


def make_home(root: Path, vms: dict[str, str]) -> Path:
    home = root / "gureum-it-x"
    (home / "run").mkdir(parents=True)
    (home / "service.log").write_text("service says\n")
    (home / "serve.out").write_text("uvicorn says\n")
    (home / "gureum.db").write_text("not a log")
    for instance_id, said in vms.items():
        run = home / "run" / instance_id
        run.mkdir()
        (run / "serial.log").write_text(f"{said} on the console\n")
        (run / "qemu.log").write_text(f"{said} from qemu\n")
        (run / "qmp.sock").write_text("")  # not a log: not copied
    return home


def test_copy_logs_takes_the_service_and_vm_logs_only(tmp_path):
    home = make_home(tmp_path, {"i-1": "one", "i-2": "two"})
    (home / "run" / "i-1" / "serial.log.1").write_text("older\n")
    (home / "run" / "i-2" / "serial.log").unlink()
    (home / "run" / "i-2" / "serial.log").symlink_to(home / "gureum.db")  # never followed
    dest = tmp_path / "kept"
    copied = copy_logs(home, dest)
    assert sorted(str(p.relative_to(dest)) for p in copied) == [
        "run/i-1/qemu.log",
        "run/i-1/serial.log",
        "run/i-1/serial.log.1",
        "run/i-2/qemu.log",
        "serve.out",
        "service.log",
    ]
    assert (dest / "run" / "i-1" / "serial.log").read_text() == "one on the console\n"
    only = copy_logs(home, tmp_path / "one", ["i-2", "i-gone"])
    assert [str(p.relative_to(tmp_path / "one")) for p in only] == ["run/i-2/qemu.log"]


def test_a_failed_test_keeps_what_is_there_and_what_went_away(tmp_path):
    keeper = Keeper()
    try:
        home = make_home(tmp_path, {"i-1": "one", "i-2": "two"})
        keeper.homes.add(home)
        keeper.going(home, ["i-2"])  # deleted by the test: its run folder goes
        (home / "run" / "i-1" / "serial.log").write_text("one, later\n")
        for p in (home / "run" / "i-2").iterdir():
            p.unlink()
        (home / "run" / "i-2").rmdir()
        dest = tmp_path / "failed" / folder_name("tests/integration/test_x.py::test_y[a/b]")
        kept = keeper.keep(dest)
        assert dest.name == "test_x.py-test_y_a_b_"
        names = {str(p.relative_to(dest)) for p in kept}
        assert {"gureum-it-x/run/i-1/serial.log", "gureum-it-x/run/i-2/serial.log"} <= names
        assert (dest / "gureum-it-x/run/i-1/serial.log").read_text() == "one, later\n"
        assert (dest / "gureum-it-x/run/i-2/qemu.log").read_text() == "two from qemu\n"
        # The next test starts with nothing stashed; a home cleaned up is stashed whole.
        keeper.begin()
        keeper.going(home)
        keeper.homes.discard(home)
        for p in sorted(home.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        again = keeper.keep(tmp_path / "failed" / "next")
        assert {str(p.relative_to(tmp_path / "failed" / "next")) for p in again} == {
            "gureum-it-x/service.log",
            "gureum-it-x/serve.out",
            "gureum-it-x/run/i-1/serial.log",
            "gureum-it-x/run/i-1/qemu.log",
        }
    finally:
        keeper.close()
