"""A NIC hot-plugged into a running VM stays recorded once it is in the machine, whatever the
guest makes of it: its row is what its TAP's anti-spoofing rules are made from, so a guest that
stalls or hides the NIC must not get a TAP on the bridge with no rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.fakeworld import fake_api, launch


@pytest.mark.parametrize("guest_step", ["wait_for_nic", "renew_network"])
def test_a_guest_that_does_not_take_up_a_plugged_nic_keeps_it_recorded(
    tmp_path: Path, guest_step: str
) -> None:
    with fake_api(tmp_path, ("tiny",)) as (root, svc, host):
        launch(root, svc, "web", "tiny")
        assert root.post("/v1/networks", json={"name": "back", "subnet": "10.9.0.0/24"}).is_success
        host.fail_at = guest_step  # the guest never shows the NIC, or its DHCP fails
        resp = root.post("/v1/instances/web/nics", json={"network": "back"})
        assert resp.status_code in (200, 201), resp.text
        out = resp.json()
        assert out["applied"] == "live"
        assert "did not take it up" in out["note"]
        assert "unplug_nic" not in host.calls
        inst = svc.instances.get("web")
        nics = svc.networks.store.nics(instance_id=inst.id)
        assert out["mac"] in {n.mac for n in nics}  # the row: its TAP keeps its filter
        assert inst.hardware is not None and out["mac"] in {mac for _, mac, _ in inst.hardware.nics}


def test_a_nic_qemu_could_not_plug_leaves_no_row(tmp_path: Path) -> None:
    with fake_api(tmp_path, ("tiny",)) as (root, svc, host):
        launch(root, svc, "web", "tiny")
        assert root.post("/v1/networks", json={"name": "back", "subnet": "10.9.0.0/24"}).is_success
        host.fail_at = "hotplug_nic"
        resp = root.post("/v1/instances/web/nics", json={"network": "back"})
        assert resp.status_code >= 400, resp.text
        assert len(svc.networks.store.nics(instance_id=svc.instances.get("web").id)) == 1
