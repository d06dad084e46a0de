"""A VM's virtual hardware as QEMU must see it: what was present at boot and what was
hot-plugged since.

Restoring a memory snapshot needs the exact same devices as when it was taken (QEMU's device
state only loads into an identical machine), so this is recorded with the VM and with each
memory snapshot, and rendered into the command line.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass, replace

MAX_DIMMS = 8
MAX_NICS = 4  # PCIe root ports made at boot, so NICs can be hot-plugged into them
MEMORY_BLOCK_MIB = 128  # x86 Linux onlines hot-plugged memory in 128 MiB blocks
DEFAULT_MAX_CPUS = 8


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

    @classmethod
    def for_boot(
        cls, cpus: int, memory_mib: int, nics: tuple[tuple[int, str, str], ...] = ()
    ) -> Hardware:
        """Fresh hardware for a cold boot: everything present from the start, room to grow."""
        return cls(
            cpus=cpus,
            max_cpus=max(cpus, DEFAULT_MAX_CPUS),
            memory_mib=memory_mib,
            max_memory_mib=min(max(memory_mib * 4, memory_mib + 4096), 1024 * 1024),
            generation_id=new_generation_id(),
            nics=nics,
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
        fresh = Hardware.for_boot(cpus, memory_mib, self.nics if nics is None else nics)
        return replace(fresh, generation_id=self.generation_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Hardware:
        raw = json.loads(text)
        raw["hot_cpus"] = tuple(raw.get("hot_cpus", ()))
        raw["dimms"] = tuple(raw.get("dimms", ()))
        raw["nics"] = tuple(tuple(n) for n in raw.get("nics", ()))
        raw.pop("mac", None)  # recorded by versions before NICs had rows of their own
        return cls(**raw)
