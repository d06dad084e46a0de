import json
from dataclasses import replace
from pathlib import Path

import pytest

from gureum.engine.qemu import accel
from gureum.engine.qemu.argv import (
    AGENT_PORT_NAME,
    SANDBOX,
    RamFiles,
    RuntimePaths,
    VMConfig,
    device_args,
    opt,
    render,
)
from gureum.errors import InvalidInput
from gureum.model.hardware import Hardware

HW = Hardware(
    cpus=2,
    max_cpus=8,
    memory_mib=512,
    max_memory_mib=4608,
    generation_id="11111111-2222-3333-4444-555555555555",
    nics=((0, "52:54:00:aa:bb:cc", "n-1"),),
)


def config(**kw):
    base = dict(
        name="web1",
        hardware=HW,
        accel="tcg",
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        disk_chain=(Path("/home/i/root.qcow2"),),
        runtime=RuntimePaths(Path("/run/g/i-1")),
        hostname="web1",
        taps=((0, 7),),
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
    assert arg_after(argv, "-smp") == ["cpus=2,maxcpus=8"]
    assert arg_after(argv, "-m") == ["512M,slots=8,maxmem=4608M"]
    assert arg_after(argv, "-object") == ["memory-backend-ram,id=mem0,size=512M"]
    assert "q35,memory-backend=mem0" in arg_after(argv, "-machine")
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
    assert "virtio-net-pci,id=nic0,netdev=net0,mac=52:54:00:aa:bb:cc,bus=rp0" in devices
    assert arg_after(argv, "-netdev") == ["tap,id=net0,fd=7"]
    assert sum(d.startswith("pcie-root-port") for d in arg_after(argv, "-device")) == 4
    assert "vmgenid,guid=11111111-2222-3333-4444-555555555555" in devices
    assert "-incoming" not in argv


def test_render_kvm_and_unpaused():
    argv = render(config(accel="kvm", start_paused=False))
    assert arg_after(argv, "-accel") == ["kvm"] and arg_after(argv, "-cpu") == ["host"]
    assert "-S" not in argv


def test_render_restore_with_hot_plugged_parts():
    hw = replace(HW, hot_cpus=(2, 3), dimms=(256,))
    argv = render(config(hardware=hw, ram=RamFiles(Path("/snap/s-1"), share=False), incoming=True))
    objects = arg_after(argv, "-object")
    assert objects == [
        "memory-backend-file,id=mem0,size=512M,mem-path=/snap/s-1/ram-mem0,share=off",
        "memory-backend-file,id=dimm0-mem,size=256M,mem-path=/snap/s-1/ram-dimm0-mem,share=off",
    ]
    devices = arg_after(argv, "-device")
    assert "pc-dimm,id=dimm0,memdev=dimm0-mem" in devices
    assert "max-x86_64-cpu,id=cpu2,socket-id=0,core-id=2,thread-id=0" in devices
    assert arg_after(argv, "-incoming") == ["defer"] and "-S" in argv
    assert device_args("max-x86_64-cpu,id=cpu3,socket-id=0,core-id=3,thread-id=0") == {
        "driver": "max-x86_64-cpu",
        "id": "cpu3",
        "socket-id": 0,
        "core-id": 3,
        "thread-id": 0,
    }


def test_disk_chain_is_given_node_by_node():
    """QEMU opens exactly the recorded chain: every qcow2 node names its backing node, the
    bottom ``null``, so no backing name written in a file's header is ever followed."""
    chain = (Path("/h/disks/top.qcow2"), Path("/h/disks/mid.qcow2"), Path("/h/images/disk.qcow2"))
    argv = render(config(disk_chain=chain))
    nodes = [json.loads(b) for b in arg_after(argv, "-blockdev")]
    files = {n["node-name"]: n["filename"] for n in nodes if n["driver"] == "file"}
    formats = [n for n in nodes if n["driver"] == "qcow2"]
    assert [files[f["file"]] for f in formats] == [str(p) for p in reversed(chain)]
    assert [f["backing"] for f in formats] == [None, "layer2", "layer1"]
    assert formats[-1]["node-name"] == "root" and not formats[-1]["read-only"]
    assert all(n["read-only"] for n in nodes if not n["node-name"].startswith("root"))
    assert "virtio-blk-pci,drive=root,id=root-disk,bootindex=1" in arg_after(argv, "-device")


def test_render_read_only_root():
    argv = render(config(root_read_only=True))
    assert all(json.loads(b)["read-only"] for b in arg_after(argv, "-blockdev"))


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


def test_a_disk_that_boots_itself_gets_seabios_or_ovmf_as_its_hardware_says():
    bios = render(config(kernel=None, initrd=None))
    assert "-kernel" not in bios and "-bios" not in bios  # QEMU's own SeaBIOS
    uefi = render(config(kernel=None, initrd=None, hardware=replace(HW, firmware="uefi"),
                         ovmf="/fw/OVMF.fd"))  # fmt: skip
    assert arg_after(uefi, "-bios") == ["/fw/OVMF.fd"]
    assert "-kernel" not in uefi
    # A kernel booted directly needs no firmware of the disk's.
    assert "-bios" not in render(config(hardware=replace(HW, firmware="uefi")))


def test_a_qemu_of_the_pool_names_no_hostname_on_the_kernel_command_line():
    # Its VM has no name yet: a reboot of the guest keeps the name it was told (/etc/hostname),
    # not a placeholder naming the template.
    cmdline = arg_after(render(config(hostname="")), "-append")[0]
    assert "gureum.hostname" not in cmdline and "root=/dev/vda" in cmdline
