"""Instant launch (issue 13): a template of `tiny` is made once; launches of its shape are clones
of the saved machine, each with an identity of its own that the guest itself reports; a cold
launch still boots; the template and its clones survive a service restart.

Its own service: the templates project's network is made and removed here.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from gureum.client.client import ApiError
from tests.integration.conftest import Service, running_service
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def svc():  # type: ignore[no-untyped-def]
    with running_service() as service:
        yield service


def _json(service: Service, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(service.cli(*args, "-o", "json").stdout)


def identity(service: Service, name: str) -> dict[str, str]:
    """What the guest says it is, and what gureum says of it. The clone asks DHCP for its own
    address in the background: wait until the guest has the one gureum recorded."""
    shown = _json(service, "show", name)
    recorded = shown["nics"][0]["ip"]
    wait_for(lambda: recorded in service.exec(name, "ip", "-4", "addr", "show", "dev", "eth0"),
             30, interval=0.2, what=f"{name} has {recorded}")  # fmt: skip
    said = service.exec(
        name, "sh", "-c",
        "hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; "
        "head -c 16 /dev/urandom | od -An -tx1",
    ).split("\n")  # fmt: skip
    return {
        "hostname": said[0],
        "machine_id": said[1],
        "mac": said[2],
        "address": recorded,
        "random": said[3].strip(),
        "generation_id": shown["generation_id"],
        "id": shown["id"],
    }


def test_clones_of_a_template_each_have_their_own_identity(svc: Service) -> None:
    made = _json(svc, "image", "template", "tiny")["id"]
    image = _json(svc, "image", "show", "tiny")
    assert [t["id"] for t in image["templates"]] == [made]

    svc.cli("launch", "tiny", "--name", "c1")
    svc.cli("launch", "tiny", "--name", "c2")
    shown = _json(svc, "show", "c1")
    assert shown["template_id"] == made
    phases = [p["event"] for p in shown["boot"]["phases"] if p["at"] is not None]
    assert "memory_restored" in phases and "kernel_started" not in phases  # resumed, not booted

    one, two = identity(svc, "c1"), identity(svc, "c2")
    assert one["hostname"] == "c1" and two["hostname"] == "c2"
    assert shown["nics"][0]["mac"] == one["mac"]  # the guest took the MAC gureum gave it
    shared = {k for k in one if one[k] == two[k]}
    assert not shared, f"two clones of one template share {shared}"
    clones = _json(svc, "image", "show", "tiny")["templates"][0]["clones"]
    assert clones == 2


def test_a_cold_launch_still_boots(svc: Service) -> None:
    svc.cli("launch", "tiny", "--name", "cold1", "--cold")
    shown = _json(svc, "show", "cold1")
    assert shown["template_id"] is None
    assert "kernel_started" in [p["event"] for p in shown["boot"]["phases"] if p["at"]]
    svc.cli("delete", "cold1", "--force")


def test_the_template_and_its_clones_survive_a_service_restart(svc: Service) -> None:
    svc.stop()
    svc.start()
    assert _json(svc, "show", "c1")["state"] == "running"
    assert svc.exec("c1", "hostname").strip() == "c1"
    svc.cli("launch", "tiny", "--name", "c3")  # the template still serves after the restart
    assert _json(svc, "show", "c3")["template_id"] is not None


def pool_waiting(service: Service) -> int:
    return int(_json(service, "host", "pool")["waiting"])


def test_a_pool_of_two_serves_two_launches_at_once_and_refills(svc: Service) -> None:
    assert _json(svc, "host", "pool", "--size", "2")["size"] == 2
    wait_for(lambda: pool_waiting(svc) == 2, 120, interval=0.2, what="the pool holds 2")
    waiting = set(svc.qemu_pids())
    launched: dict[str, dict] = {}  # type: ignore[type-arg]

    def launch(name: str) -> None:
        launched[name] = svc.launch(name)

    threads = [threading.Thread(target=launch, args=(n,)) for n in ("p1", "p2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert set(launched) == {"p1", "p2"}
    for inst in launched.values():
        phases = {p["event"]: p["at"] for p in inst["boot"]["phases"]}
        assert phases["taken_from_pool"] is not None, inst["boot"]  # a QEMU of the pool's
        assert phases["process_started"] is None and phases["kernel_started"] is None
        assert inst["pid"] in waiting  # the very process that waited
        assert inst["state"] == "running" and inst["template_id"] is not None
    one, two = identity(svc, "p1"), identity(svc, "p2")
    assert (one["hostname"], two["hostname"]) == ("p1", "p2")
    shared = {k for k in one if one[k] == two[k]}
    assert not shared, f"two clones from the pool share {shared}"
    # The template was saved minutes ago: each clone's clock was set when it was told.
    guest_now = int(svc.exec("p1", "date", "+%s"))
    assert abs(guest_now - time.time()) < 10
    # Its network came up after it was ready, and its timeline says when.
    shown = _json(svc, "show", "p1")
    network_up = next(p for p in shown["boot"]["phases"] if p["event"] == "network_up")
    assert network_up["at"] is not None
    wait_for(lambda: pool_waiting(svc) == 2, 120, interval=0.2, what="the pool refills")

    # The pool ends with the service, and is made again at start.
    in_pool = (
        set(svc.qemu_pids())
        - {launched[n]["pid"] for n in launched}
        - {i["pid"] for i in svc.client().instances() if i["pid"]}
    )
    assert len(in_pool) == 2
    svc.stop()
    assert not in_pool & set(svc.qemu_pids())
    svc.start()
    wait_for(lambda: pool_waiting(svc) == 2, 120, interval=0.2, what="the pool is rebuilt")
    assert _json(svc, "show", "p1")["state"] == "running"
    _json(svc, "host", "pool", "--size", "0")
    wait_for(lambda: pool_waiting(svc) == 0, 60, interval=0.2, what="the pool empties")

    # A reboot inside the guest resets it in the same QEMU: it comes back with its own name,
    # MAC (QEMU's, chosen for it) and address, not the template's or a placeholder's.
    before = identity(svc, "p1")
    boot_id = svc.exec("p1", "cat", "/proc/sys/kernel/random/boot_id")
    svc.exec("p1", "sh", "-c", "(sleep 1; reboot) >/dev/null 2>&1 &")

    def rebooted() -> bool:  # the kernel makes a new boot id at each boot
        try:
            return svc.exec("p1", "cat", "/proc/sys/kernel/random/boot_id") != boot_id
        except (AssertionError, ApiError):
            return False

    wait_for(rebooted, 120, interval=0.5, what="p1 rebooted and answers")
    after = identity(svc, "p1")
    assert {k: after[k] for k in ("hostname", "mac", "address")} == {
        k: before[k] for k in ("hostname", "mac", "address")
    }
    for name in launched:
        svc.cli("delete", name, "--force")


def test_templates_under_clones_stay_until_the_clones_go(svc: Service) -> None:
    kept = _json(svc, "image", "template", "tiny", "--delete")
    assert kept["removed"] == []
    for name in ("c1", "c2", "c3"):
        svc.cli("delete", name, "--force")
    assert len(_json(svc, "image", "template", "tiny", "--delete")["removed"]) == 1
    assert _json(svc, "image", "show", "tiny")["templates"] == []
