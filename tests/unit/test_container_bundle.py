"""The OCI configuration of a system container (issue 14): what keeps it apart, as runc reads it."""

from __future__ import annotations

from pathlib import Path

from gureum.engine.container import bundle
from gureum.engine.container.bundle import ContainerSpec, oci_config

SPEC = ContainerSpec(
    container_id="i-0123456789ab",
    hostname="c1",
    rootfs=Path("/var/lib/gureum/containers/i-0123456789ab/root"),
    uid_base=1_600_065_536,
    cpus=2,
    memory_mib=256,
    cgroup="/gureum-home/p-default/i-0123456789ab",
)


def test_root_inside_is_a_range_of_host_uids_of_its_own() -> None:
    linux = oci_config(SPEC)["linux"]
    assert isinstance(linux, dict)
    mapping = [{"containerID": 0, "hostID": 1_600_065_536, "size": bundle.UID_RANGE}]
    assert linux["uidMappings"] == mapping and linux["gidMappings"] == mapping
    kinds = {n["type"] for n in linux["namespaces"]}
    assert kinds == {"pid", "network", "ipc", "uts", "mount", "user", "cgroup"}


def test_a_given_network_namespace_is_joined_else_a_new_one_is_made() -> None:
    def network(spec: ContainerSpec) -> dict[str, str]:
        linux = oci_config(spec)["linux"]
        assert isinstance(linux, dict)
        return next(n for n in linux["namespaces"] if n["type"] == "network")

    assert network(SPEC) == {"type": "network"}
    joined = ContainerSpec(**{**SPEC.__dict__, "netns": Path("/run/netns/gureum-n1")})
    assert network(joined) == {"type": "network", "path": "/run/netns/gureum-n1"}


def test_no_new_privileges_and_no_host_wide_capabilities() -> None:
    process = oci_config(SPEC)["process"]
    assert isinstance(process, dict)
    assert process["noNewPrivileges"] is True
    assert process["user"] == {"uid": 0, "gid": 0}
    assert "container=gureum" in process["env"]
    for kind in ("bounding", "effective", "permitted"):
        caps = set(process["capabilities"][kind])
        assert not caps & {"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_MAC_ADMIN",
                           "CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG"}  # fmt: skip


def test_seccomp_refuses_the_calls_that_reach_the_host_kernel() -> None:
    linux = oci_config(SPEC)["linux"]
    assert isinstance(linux, dict)
    filt = linux["seccomp"]
    assert filt["defaultAction"] == "SCMP_ACT_ALLOW"
    (rule,) = filt["syscalls"]
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 1  # EPERM
    for call in ("init_module", "finit_module", "kexec_load", "bpf", "perf_event_open",
                 "open_by_handle_at", "swapon", "syslog", "clock_settime", "keyctl"):  # fmt: skip
        assert call in rule["names"], call


def test_proc_sys_and_sys_are_read_only_and_limits_are_set() -> None:
    cfg = oci_config(SPEC)
    linux = cfg["linux"]
    assert isinstance(linux, dict)
    assert "/proc/sys" in linux["readonlyPaths"] and "/proc/sysrq-trigger" in linux["readonlyPaths"]
    assert "/proc/kcore" in linux["maskedPaths"]
    mounts = {m["destination"]: m for m in cfg["mounts"]}  # type: ignore[attr-defined]
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    res = linux["resources"]
    assert res["memory"]["limit"] == 256 * 2**20
    assert res["cpu"] == {"quota": 200_000, "period": 100_000}
    assert res["pids"]["limit"] == bundle.PIDS_LIMIT
    assert linux["cgroupsPath"] == "/gureum-home/p-default/i-0123456789ab"
    assert cfg["hostname"] == "c1"


def test_only_an_init_that_manages_control_groups_gets_them_writable() -> None:
    def cgroup_options(spec: ContainerSpec) -> list[str]:
        mounts = oci_config(spec)["mounts"]
        assert isinstance(mounts, list)
        return next(m["options"] for m in mounts if m["destination"] == "/sys/fs/cgroup")

    assert "ro" in cgroup_options(SPEC)
    systemd = ContainerSpec(**{**SPEC.__dict__, "delegate_cgroups": True})
    assert "rw" in cgroup_options(systemd) and "ro" not in cgroup_options(systemd)
