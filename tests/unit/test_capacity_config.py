import pytest

from gureum.config import load_config
from gureum.errors import InsufficientCapacity, InvalidInput
from gureum.host.capacity import HostCapacity, admit, host_memory_mib

HOST = HostCapacity(cpus=2, memory_mib=4096, memory_reserve_mib=1024, cpu_overcommit=4.0)


def test_admit_within_limits():
    admit(HOST, committed_cpus=4, committed_mib=2048, cpus=4, memory_mib=1024)


def test_admit_refuses_memory():
    with pytest.raises(InsufficientCapacity, match="not enough host memory") as exc:
        admit(HOST, committed_cpus=0, committed_mib=2048, cpus=1, memory_mib=1025)
    assert exc.value.code == "insufficient-capacity"


def test_admit_refuses_vcpus():
    with pytest.raises(InsufficientCapacity, match="not enough host CPUs"):
        admit(HOST, committed_cpus=7, committed_mib=0, cpus=2, memory_mib=128)


def test_host_memory_parse():
    assert host_memory_mib("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == 24000


def test_config_env_and_file(tmp_path):
    (tmp_path / "config.toml").write_text('accel = "tcg"\ncpu_overcommit = 2\n')
    cfg = load_config(
        tmp_path, env={"GUREUM_STOP_TIMEOUT": "5", "GUREUM_MEMORY_RESERVE_MIB": "100"}
    )
    assert cfg.accel == "tcg" and cfg.cpu_overcommit == 2.0
    assert cfg.stop_timeout_s == 5.0 and cfg.memory_reserve_mib == 100
    assert cfg.socket_path == tmp_path / "gureum.sock"
    assert cfg.cache_dir == tmp_path / "cache"
    assert load_config(tmp_path, env={"GUREUM_CACHE_DIR": "/x"}).cache_dir.as_posix() == "/x"
    assert cfg.auto_templates is False
    assert load_config(tmp_path, env={"GUREUM_AUTO_TEMPLATES": "yes"}).auto_templates is True
    (tmp_path / "config.toml").write_text("auto_templates = true\n")
    assert load_config(tmp_path, env={}).auto_templates is True
    (tmp_path / "config.toml").write_text("auto_templates = false\n")
    assert load_config(tmp_path, env={}).auto_templates is False


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ('accel = "hvf"\n', {}),
        ("bogus = 1\n", {}),
        ("cpu_overcommit = [\n", {}),
        ("", {"GUREUM_STOP_TIMEOUT": "soon"}),
        ("", {"GUREUM_AUTO_TEMPLATES": "maybe"}),
    ],
)
def test_config_errors(tmp_path, text, env):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(InvalidInput):
        load_config(tmp_path, env=env)


def test_a_cluster_port_needs_postgresql(tmp_path):
    with pytest.raises(InvalidInput, match="needs PostgreSQL"):
        load_config(tmp_path, env={"GUREUM_CLUSTER_LISTEN": "127.0.0.1:8443"})
    with_pg = {"GUREUM_CLUSTER_LISTEN": "127.0.0.1:8443",
               "GUREUM_DATABASE_URL": "postgresql://gureum@db/gureum"}  # fmt: skip
    assert load_config(tmp_path, env=with_pg).cluster_listen == "127.0.0.1:8443"
