"""A VM's virtual hardware as QEMU must see it: what was present at boot and what was
hot-plugged since.

Restoring a memory snapshot needs the exact same devices as when it was taken (QEMU's device
state only loads into an identical machine), so this is recorded with the VM and with each
memory snapshot, and rendered into the command line.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import asdict, dataclass, replace
from enum import StrEnum

MAX_DIMMS = 8
MAX_NICS = 4  # PCIe root ports made at boot, so NICs can be hot-plugged into them
MEMORY_BLOCK_MIB = 128  # x86 Linux onlines hot-plugged memory in 128 MiB blocks
DEFAULT_MAX_CPUS = 8
MAX_CPUS = 255  # q35 without an IOMMU's interrupt remapping
MAX_MEMORY_MIB = 1024 * 1024  # the hot-plug ceiling for_boot never exceeds


class Firmware(StrEnum):
    """What boots a disk's own bootloader: SeaBIOS, or OVMF (UEFI). The API and the CLI take
    these names; the hardware record keeps the plain string."""

    BIOS = "bios"
    UEFI = "uefi"


BIOS, UEFI = Firmware.BIOS.value, Firmware.UEFI.value
FIRMWARES = tuple(f.value for f in Firmware)
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def new_mac() -> str:
    """A random locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def new_generation_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Hardware:
    cpus: int  # present at boot (-smp cpus=)
    max_cpus: int  # hot-plug ceiling (-smp maxcpus=)
    memory_mib: int  # base RAM, memory backend "mem0"
    max_memory_mib: int  # hot-plug ceiling (-m maxmem=)
    generation_id: str  # the vmgenid GUID; changes on every restore and clone
    hot_cpus: tuple[int, ...] = ()  # core ids plugged after boot
    dimms: tuple[int, ...] = ()  # MiB of each DIMM plugged after boot: dimm0, dimm1...
    # (slot, MAC, network id) of each NIC; the slot is its PCIe root port.
    nics: tuple[tuple[int, str, str], ...] = ()
    # The firmware that boots a disk with its own bootloader: SeaBIOS ("bios") or OVMF
    # ("uefi"). Part of the machine: a memory snapshot resumes only into the same firmware.
    firmware: str = BIOS

    @classmethod
    def for_boot(
        cls,
        cpus: int,
        memory_mib: int,
        nics: tuple[tuple[int, str, str], ...] = (),
        firmware: str = BIOS,
    ) -> Hardware:
        """Fresh hardware for a cold boot: everything present from the start, room to grow."""
        return cls(
            cpus=cpus,
            max_cpus=max(cpus, DEFAULT_MAX_CPUS),
            memory_mib=memory_mib,
            max_memory_mib=min(max(memory_mib * 4, memory_mib + 4096), 1024 * 1024),
            generation_id=new_generation_id(),
            nics=nics,
            firmware=firmware,
        )

    @property
    def mac(self) -> str | None:
        return self.nics[0][1] if self.nics else None

    @property
    def total_cpus(self) -> int:
        return self.cpus + len(self.hot_cpus)

    @property
    def total_memory_mib(self) -> int:
        return self.memory_mib + sum(self.dimms)

    def memory_backends(self) -> list[tuple[str, int]]:
        """(backend id, MiB) for every RAM block, in the order QEMU creates them."""
        return [("mem0", self.memory_mib)] + [(f"dimm{i}-mem", m) for i, m in enumerate(self.dimms)]

    def rebooted(
        self, cpus: int, memory_mib: int, nics: tuple[tuple[int, str, str], ...] | None = None
    ) -> Hardware:
        """What the next cold boot gets: hot-plugged parts folded into the base."""
        nics = self.nics if nics is None else nics
        fresh = Hardware.for_boot(cpus, memory_mib, nics, self.firmware)
        return replace(fresh, generation_id=self.generation_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Hardware:
        """Hardware as gureum recorded it (see ``check_hardware`` for one from elsewhere)."""
        raw = json.loads(text)
        raw["hot_cpus"] = tuple(raw.get("hot_cpus", ()))
        raw["dimms"] = tuple(raw.get("dimms", ()))
        raw["nics"] = tuple(tuple(n) for n in raw.get("nics", ()))
        raw.pop("mac", None)  # recorded by versions before NICs had rows of their own
        return cls(**raw)


def check_hardware(hw: Hardware) -> None:
    """Refuse (ValueError) a machine description that did not come from gureum: every value
    is rendered into QEMU's command line, so each is checked for type and range (a MAC such as
    ``52:54:00:00:00:01,romfile=...`` would add an option)."""

    def whole(value: object, low: int, high: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
        return value

    whole(hw.cpus, 1, MAX_CPUS, "cpus")
    whole(hw.max_cpus, hw.cpus, MAX_CPUS, "max_cpus")
    whole(hw.memory_mib, MEMORY_BLOCK_MIB, MAX_MEMORY_MIB, "memory_mib")
    if len(hw.dimms) > MAX_DIMMS:
        raise ValueError(f"at most {MAX_DIMMS} memory modules")
    for mib in hw.dimms:
        if whole(mib, MEMORY_BLOCK_MIB, MAX_MEMORY_MIB, "a module's MiB") % MEMORY_BLOCK_MIB:
            raise ValueError(f"a memory module is a multiple of {MEMORY_BLOCK_MIB} MiB")
    whole(hw.max_memory_mib, hw.total_memory_mib, MAX_MEMORY_MIB, "max_memory_mib")
    if len(set(hw.hot_cpus)) != len(hw.hot_cpus):
        raise ValueError("a hot-plugged CPU is listed twice")
    for core in hw.hot_cpus:
        whole(core, hw.cpus, hw.max_cpus - 1, "a hot-plugged CPU's core id")
    if (
        not isinstance(hw.generation_id, str)
        or str(uuid.UUID(hw.generation_id)) != hw.generation_id
    ):
        raise ValueError("generation_id is not a GUID")
    if hw.firmware not in FIRMWARES:
        raise ValueError(f"firmware is one of {', '.join(FIRMWARES)}, not {hw.firmware!r}")
    if len(hw.nics) > MAX_NICS:
        raise ValueError(f"at most {MAX_NICS} NICs")
    for nic in hw.nics:
        if len(nic) != 3 or not isinstance(nic[1], str) or not MAC.fullmatch(nic[1]):
            raise ValueError(f"a NIC is (slot, MAC, network), not {nic!r}")
        whole(nic[0], 0, MAX_NICS - 1, "a NIC's slot")
    if len({nic[0] for nic in hw.nics}) != len(hw.nics):
        raise ValueError("two NICs in one slot")
