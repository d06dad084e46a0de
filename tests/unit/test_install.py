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


def test_the_default_config_shows_every_setting_its_default_and_its_real_variable():
    """Issue 11: the file said the variables were GUREUM_<KEY> (GUREUM_LISTEN_TCP: not read)
    and left out ten settings while saying every one was shown. Each block of it is comments
    ending in ``# key = value``, and names the variable that overrides that key."""
    import re
    import tomllib
    from dataclasses import MISSING, fields

    from gureum.config import _ENV

    text = (REPO / "packaging" / "config.toml").read_text()
    shown: dict[str, tuple[object, str | None]] = {}
    for block in text.split("\n\n")[1:]:
        *said, setting = block.strip().splitlines()
        assert setting.startswith("# ") and " = " in setting, block
        (key, value), = tomllib.loads(setting.removeprefix("# ")).items()  # fmt: skip
        named = re.findall(r"Environment: (GUREUM_\w+)\.", " ".join(said))
        shown[key] = (value, named[0] if len(named) == 1 else None)
    settings = {f.name: f.default for f in fields(Config) if f.name != "home"}
    assert set(shown) == set(settings), set(settings) ^ set(shown)
    for key, (value, variable) in shown.items():
        assert variable == _ENV[key], f"{key}: {variable}, not {_ENV[key]}"
        default = settings[key]
        assert default is MISSING or default is None or value == default, f"{key}: {value}"
    variables = set(re.findall(r"GUREUM_\w+", text))
    assert variables <= {*_ENV.values(), "GUREUM_HOME"}, variables - set(_ENV.values())
