import json
from pathlib import Path

import pytest

from gureum.engine.qemu import accel
from gureum.engine.qemu.argv import AGENT_PORT_NAME, SANDBOX, RuntimePaths, VMConfig, opt, render
from gureum.errors import InvalidInput


def config(**kw):
    base = dict(
        name="web1",
        cpus=2,
        memory_mib=512,
        accel="tcg",
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        root_disk=Path("/home/i/root.qcow2"),
        runtime=RuntimePaths(Path("/run/g/i-1")),
        hostname="web1",
    )
    base.update(kw)
    return VMConfig(**base)


def arg_after(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_render_tcg():
    argv = render(config())
    assert argv[0] == "qemu-system-x86_64"
    assert arg_after(argv, "-name") == ["guest=web1,debug-threads=on"]
    assert arg_after(argv, "-accel") == ["tcg,thread=multi,tb-size=128"]
    assert arg_after(argv, "-cpu") == ["max"]
    assert arg_after(argv, "-smp") == ["2"] and arg_after(argv, "-m") == ["512M"]
    assert arg_after(argv, "-sandbox") == [SANDBOX]
    assert "elevateprivileges=deny" in SANDBOX and "spawn=deny" in SANDBOX
    assert "-S" in argv and "-nodefaults" in argv
    assert "root=/dev/vda" in arg_after(argv, "-append")[0]
    assert "gureum.hostname=web1" in arg_after(argv, "-append")[0]
    blockdevs = [json.loads(b) for b in arg_after(argv, "-blockdev")]
    assert blockdevs[0]["filename"] == "/home/i/root.qcow2"
    assert any(f"name={AGENT_PORT_NAME}" in d for d in arg_after(argv, "-device"))
    assert arg_after(argv, "-qmp") == ["unix:/run/g/i-1/qmp.sock,server=on,wait=off"]
    devices = " ".join(arg_after(argv, "-device"))
    for dev in ("virtio-blk-pci", "virtio-rng-pci", "virtio-serial-pci"):
        assert dev in devices


def test_render_kvm_and_unpaused():
    argv = render(config(accel="kvm", start_paused=False))
    assert arg_after(argv, "-accel") == ["kvm"] and arg_after(argv, "-cpu") == ["host"]
    assert "-S" not in argv


def test_commas_in_paths_are_escaped():
    argv = render(config(runtime=RuntimePaths(Path("/odd,dir/i-1"))))
    assert arg_after(argv, "-qmp") == ["unix:/odd,,dir/i-1/qmp.sock,server=on,wait=off"]
    assert opt("a,b,,c") == "a,,b,,,,c"


CPU_VMX = "processor: 0\nflags\t\t: fpu vme vmx sse\n"
CPU_PLAIN = "processor: 0\nflags\t\t: fpu vme sse hypervisor\n"


def test_accel_probe():
    assert accel.choose("auto", cpuinfo=CPU_VMX, kvm_ok=True).accel == "kvm"
    # /dev/kvm opening is not enough without hardware virtualisation in the CPU flags.
    assert accel.choose("auto", cpuinfo=CPU_PLAIN, kvm_ok=True).accel == "tcg"
    assert accel.choose("auto", cpuinfo=CPU_VMX, kvm_ok=False).accel == "tcg"
    assert accel.choose("tcg", cpuinfo=CPU_VMX, kvm_ok=True).accel == "tcg"
    assert accel.choose("kvm", cpuinfo=CPU_PLAIN, kvm_ok=True).accel == "kvm"
    with pytest.raises(InvalidInput):
        accel.choose("kvm", cpuinfo=CPU_VMX, kvm_ok=False)
    with pytest.raises(InvalidInput):
        accel.choose("hvf", cpuinfo=CPU_VMX, kvm_ok=True)
    assert accel.cpu_has_virtualisation("flags : svm\n")
    assert not accel.cpu_has_virtualisation("flags : vmxnet\n")
