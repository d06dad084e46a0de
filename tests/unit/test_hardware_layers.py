import json
import time
from dataclasses import replace

import pytest

from gureum.model.hardware import Hardware, check_hardware, new_mac
from gureum.model.instance import Instance, InstanceSpec, State
from gureum.model.snapshot import Layer, Snapshot
from gureum.store.db import Database
from gureum.store.instances import InstanceStore
from gureum.store.layers import LayerStore, SnapshotStore


def test_hardware_for_boot_and_reboot():
    hw = Hardware.for_boot(2, 512, ((0, new_mac(), "n-1"),))
    assert (hw.cpus, hw.max_cpus, hw.memory_mib) == (2, 8, 512)
    assert hw.max_memory_mib >= 512 * 4
    assert hw.mac.startswith("52:54:00:") and len(hw.mac) == 17
    grown = Hardware(**{**hw.__dict__, "hot_cpus": (2,), "dimms": (256, 128)})
    assert (grown.total_cpus, grown.total_memory_mib) == (3, 896)
    assert grown.memory_backends() == [("mem0", 512), ("dimm0-mem", 256), ("dimm1-mem", 128)]
    rebooted = grown.rebooted(3, 896)
    assert (rebooted.cpus, rebooted.memory_mib, rebooted.hot_cpus, rebooted.dimms) == (
        3,
        896,
        (),
        (),
    )
    assert rebooted.mac == hw.mac and rebooted.generation_id == hw.generation_id
    assert Hardware.from_json(grown.to_json()) == grown
    assert new_mac() != new_mac()


def test_the_firmware_is_part_of_the_machine_across_reboots_and_records():
    hw = Hardware.for_boot(1, 256, firmware="uefi")
    assert hw.rebooted(2, 512).firmware == "uefi"
    assert Hardware.from_json(hw.to_json()).firmware == "uefi"
    old = json.loads(hw.to_json())
    del old["firmware"]  # recorded before the firmware was: SeaBIOS booted them all
    assert Hardware.from_json(json.dumps(old)).firmware == "bios"
    check_hardware(hw)
    with pytest.raises(ValueError, match="firmware"):
        check_hardware(replace(hw, firmware="uefi,romfile=/etc/shadow"))


def layer(lid, backing=None):
    return Layer(lid, None, f"disks/{lid}.qcow2", backing, time.time())


def test_reachability_keeps_every_chain_whole(db):
    layers, snaps, insts = LayerStore(db), SnapshotStore(db), InstanceStore(db)
    # base <- l1 (snapshot s1) <- l2 (vm a's disk);  l1 <- l3 (clone b's disk);  l4 orphan
    for lid, backing in (("l1", None), ("l2", "l1"), ("l3", "l1"), ("l4", None)):
        layers.add(layer(lid, backing))
    hw = Hardware.for_boot(1, 256)
    for iid, root in (("i-a", "l2"), ("i-b", "l3")):
        insts.insert(
            Instance(
                iid,
                InstanceSpec(iid[2:], "tiny", 1, 256, 1 << 30),
                State.STOPPED,
                time.time(),
                "v1",
                root_layer=root,
                hardware=hw,
            )
        )
    snaps.add(Snapshot("s-1", "i-a", "s1", "l1", False, "offline", hw, 1 << 30, 0, time.time()))
    assert [x.id for x in layers.unreachable()] == ["l4"]
    assert [x.id for x in layers.chain("l2")] == ["l2", "l1"]
    assert [x.id for x in layers.chain("gone")] == []  # a missing layer ends the chain
    assert snaps.count("p-default") == 1 and snaps.count("p-other") == 0
    assert sorted(layers.users("l1")) == ["i-a", "i-b"]
    # Deleting the snapshot and vm a: l1 still carries clone b.
    snaps.remove("s-1")
    insts.delete("i-a")
    assert sorted(x.id for x in layers.unreachable()) == ["l2", "l4"]


def test_snapshot_names_unique_per_instance(db):
    snaps = SnapshotStore(db)
    hw = Hardware.for_boot(1, 256)
    snaps.add(Snapshot("s-1", "i-a", "s1", "l1", True, "paused", hw, 1, 0, time.time()))
    snaps.add(Snapshot("s-2", "i-b", "s1", "l1", True, "paused", hw, 1, 0, time.time()))
    from gureum.errors import Conflict

    with pytest.raises(Conflict):
        snaps.add(Snapshot("s-3", "i-a", "s1", "l1", True, "paused", hw, 1, 0, time.time()))
    assert snaps.get("i-a", "s1").memory is True
    assert [s.id for s in snaps.list("i-a")] == ["s-1"]


def test_old_database_migrates_to_the_latest(tmp_path, db_url):
    """A database made by the first release: its disks become one-layer chains where they are,
    and its VM joins the project "default" (migrations 2 and 4, on either backend)."""
    import sqlalchemy

    from gureum.store.db import sqlite_engine, url_engine
    from gureum.store.migrations import MIGRATIONS, current_version

    engine = url_engine(db_url) if db_url else sqlite_engine(tmp_path / "old.db")
    with engine.begin() as conn:
        current_version(conn)
        for stmt in MIGRATIONS[0][2]:
            conn.execute(sqlalchemy.text(stmt))
        conn.execute(sqlalchemy.text("INSERT INTO schema_migrations VALUES (1, 'v1', 0)"))
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO instances (id, name, image, image_version, cpus, memory_mib,"
                " disk_bytes, state, created_at, updated_at) VALUES"
                " ('i-0123456789ab', 'old', 'tiny', 'v1', 1, 256, 1, 'stopped', 0, 0)"
            )
        )
    engine.dispose()
    db = Database.open_url(db_url) if db_url else Database.open_sqlite(tmp_path / "old.db")
    inst = InstanceStore(db).get("i-0123456789ab")
    assert inst.root_layer == "l-0123456789ab"
    assert inst.project_id == "p-default" and inst.uid is None
    assert LayerStore(db).get("l-0123456789ab").path == "instances/i-0123456789ab/root.qcow2"
    db.close()
