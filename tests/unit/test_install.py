"""`make install`'s parts that can be checked without installing: the systemd unit it writes
and the default configuration (issue 11, item 5)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gureum.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


def unit(prefix: Path, home: str) -> str:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--unit", str(prefix), home],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not here")
def test_the_unit_is_valid_and_leaves_vms_running_when_it_stops(tmp_path):
    prefix = Path(sys.executable).parent.parent  # a real install: bin/gureum exists there
    text = unit(prefix, "/var/lib/gureum")
    assert "KillMode=process" in text  # stopping the service never stops its VMs
    assert f"ExecStart={prefix}/bin/gureum serve" in text
    assert "Environment=GUREUM_HOME=/var/lib/gureum" in text
    assert "@" not in text.replace("network-online.target", "")  # every placeholder filled
    path = tmp_path / "gureum.service"
    path.write_text(text)
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "gureum.service" not in checked.stderr, checked.stderr  # no warning about it


def test_the_default_config_names_only_real_settings_and_loads(tmp_path):
    text = (REPO / "packaging" / "config.toml").read_text()
    named = {
        line.lstrip("# ").split(" =")[0]
        for line in text.splitlines()
        if " = " in line and line.startswith("# ") and not line.startswith("#  ")
    }
    fields = set(Config.__dataclass_fields__)
    assert named and named <= fields, named - fields
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(text)
    assert load_config(home, env={}).accel == "auto"  # it parses: every setting is a comment
