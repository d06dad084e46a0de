"""Instances on a joined host (issue 17): the control plane places one there, and every call
about it goes to that host's agent over real TLS on loopback (``service/host_router.py``), its
engine's events coming back to the cluster port. The joined host is a FakeHost of its own, so
what ran where is plain: nothing of the instance touches the control plane's own host."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gureum.config import load_config
from gureum.errors import InsufficientCapacity, InvalidInput, InvalidState, NotFound
from gureum.host import enrolment as agent
from gureum.host.agent_port import AgentPort
from gureum.host.interface import Span
from gureum.host.remote_calls import REMOTE_ROOT
from gureum.model.instance import DEFAULT_PROJECT, Instance, InstanceSpec, State
from gureum.service.instances import LaunchRequest
from tests.unit.fakehost import FakeHost
from tests.unit.test_agent_port import _catalog_image, _joined
from tests.unit.test_enrolment import Cluster


class Joined:
    """The cluster, with h2 joined and its agent serving a FakeHost of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.cluster = Cluster(tmp_path)
        self.image = _catalog_image(self.cluster)
        self.folder, _ = _joined(self.cluster, tmp_path, "h2")
        self.config = config = load_config(self.folder.parent)
        self.h2 = FakeHost(config)
        self.h2.prepare()
        self.port = AgentPort(config, self.h2)
        self.cluster.run(self.port.start())
        self.svc = self.cluster.svc

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.cluster.run(coro)

    def launch(self, name: str, **want: object) -> str:
        req = LaunchRequest(name=name, image="tiny", **want)  # type: ignore[arg-type]
        inst, op = self.run(self.svc.templates.launch(req, DEFAULT_PROJECT))
        done = self.run(self.svc.ops.finished(op.id, 20))
        assert done.error is None, done.error
        return str(inst.id)

    def state(self, instance_id: str) -> State:
        return self.svc.instances.store.get(instance_id).state  # type: ignore[union-attr]

    def close(self) -> None:
        self.cluster.run(self.port.stop())
        self.cluster.close()


@pytest.fixture
def joined(tmp_path: Path) -> Iterator[Joined]:
    made = Joined(tmp_path)
    yield made
    made.close()


def _until(check, what: str, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_an_instance_pinned_to_a_joined_host_runs_there(joined: Joined) -> None:
    local = joined.cluster.host
    instance_id = joined.launch("web", host="h2")
    inst = joined.svc.instances.store.get(instance_id)
    assert inst is not None and (inst.host, inst.state) == ("h2", State.RUNNING)
    # It runs on h2, from h2's copy of the catalog image, on a disk recorded as h2's.
    assert instance_id in joined.h2.vms and instance_id not in local.vms
    vm = joined.h2.vms[instance_id].spec
    home = joined.folder.parent
    assert vm.kernel == home / "images" / "tiny" / "v1" / "vmlinuz"
    assert (home / "images" / "tiny" / "v1" / "vmlinuz").read_bytes() == (
        Path(joined.image.path) / "vmlinuz"
    ).read_bytes()
    layer = joined.svc.instances.disks.store.get(inst.root_layer)  # type: ignore[arg-type]
    assert layer is not None and layer.host == "h2"
    assert vm.disk_chain == (home / layer.path, home / "images" / "tiny" / "v1" / "disk.qcow2")
    assert home / layer.path in joined.h2.files
    assert not any(str(f).startswith(str(REMOTE_ROOT)) for f in local.files)
    # Its network is on h2 as well as here (DHCP there answers it).
    assert joined.h2.networks and "sync_network" in joined.h2.calls

    # Its engine's boot events came back over the cluster port.
    def phases() -> list[str]:
        view = joined.svc.instances.lifecycle.views.view(joined.svc.instances.get("web"))
        return [p["event"] for p in view["boot"]["phases"] if p["at"]]  # type: ignore[index]

    _until(lambda: {"process_started", "running"} <= set(phases()), "h2's boot events here")
    assert joined.svc.instances.store.get(instance_id).accel == "tcg"  # type: ignore[union-attr]


def test_its_guest_powering_off_there_is_heard_here(joined: Joined) -> None:
    instance_id = joined.launch("web", host="h2")
    vm = joined.h2.vms.pop(instance_id)
    joined.run(_call_soon(vm.events.on_exit, "stopped", "the guest powered off"))
    _until(lambda: joined.state(instance_id) == State.STOPPED, "stopped, as h2 reported")
    inst = joined.svc.instances.store.get(instance_id)
    assert inst is not None and inst.state_reason == "the guest powered off"


async def _call_soon(fn, *args):  # type: ignore[no-untyped-def]
    """Call an agent-side callback on the loop its agent runs on."""
    fn(*args)


def test_stop_start_and_delete_go_to_its_host(joined: Joined) -> None:
    instance_id = joined.launch("web", host="h2")
    svc = joined.svc
    op = joined.run(svc.instances.stop("web"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    assert joined.state(instance_id) == State.STOPPED and instance_id not in joined.h2.vms
    assert "stop" in joined.h2.calls and "stop" not in joined.cluster.host.calls
    op = joined.run(svc.instances.start("web"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    assert joined.state(instance_id) == State.RUNNING and instance_id in joined.h2.vms
    layer = svc.instances.store.get(instance_id).root_layer  # type: ignore[union-attr]
    disk = joined.folder.parent / "disks" / f"{layer}.qcow2"
    assert disk in joined.h2.files
    joined.run(svc.instances.delete("web", force=True))
    assert instance_id not in joined.h2.vms and disk not in joined.h2.files
    assert svc.instances.store.get(instance_id) is None
    assert not joined.h2.networks  # its last instance there is gone, and so is its network


def test_what_does_not_travel_yet_is_refused_and_never_done_here(joined: Joined) -> None:
    joined.launch("web", host="h2")
    with pytest.raises(InvalidState, match=r"console is not supported yet .* joined host h2"):
        joined.svc.instances.console("web", None)
    with pytest.raises(InvalidState, match="on joined host h2, where snapshots are not"):
        joined.run(joined.svc.snapshots.create("web", "s1", memory=True))
    with pytest.raises(
        InvalidState, match="resize disk live is not supported yet for what is on joined host h2"
    ):
        joined.run(joined.svc.instances.host.resize_disk_live(
            joined.svc.instances.get("web").id, 1 << 30))  # fmt: skip
    assert joined.cluster.host.vms == {} and joined.cluster.host.memory_images == set()
    assert joined.svc.snapshots.store.list() == []


def test_a_container_goes_only_to_the_control_planes_host(joined: Joined) -> None:
    joined.svc.hosts.report()
    joined.svc.hosts.set_state(joined.svc.hosts.name, "cordoned")
    req = LaunchRequest(name="c1", image="tiny", container=True)
    with pytest.raises(InsufficientCapacity, match="h2: a joined host does not run containers"):
        joined.run(joined.svc.templates.launch(req, DEFAULT_PROJECT))


def test_another_hosts_word_about_an_instance_is_not_taken(joined: Joined, tmp_path: Path) -> None:
    instance_id = joined.launch("web", host="h2")
    folder3, _ = _joined(joined.cluster, tmp_path, "h3")
    request = {"op": "event", "instance": instance_id, "event": "exit", "how": "crashed",
               "detail": "h3 says so"}  # fmt: skip
    with pytest.raises(NotFound, match="host h3 has no instance"):
        agent.ask(joined.cluster.enrolment.cluster_listen, request, agent.own_context(folder3))
    assert joined.state(instance_id) == State.RUNNING


def test_a_network_with_instances_on_two_hosts_spans_them(joined: Joined) -> None:
    """Each host with one of the network's instances joins the others over VXLAN, with the
    network's own VNI, from its cluster address; the span goes when one host is left."""
    svc, local = joined.svc, joined.cluster.host
    svc.router.cluster_listen = "127.0.0.9:8443"  # the control plane's cluster address
    svc.hosts.report()
    joined.launch("here", host=svc.hosts.name)
    net = svc.networks.get("default", DEFAULT_PROJECT)
    assert net.vni is not None and local.spans[net.id] is None  # one host: no span
    joined.launch("there", host="h2")
    h2_ip = "127.0.0.1"  # where h2 was enrolled
    assert local.spans[net.id] == Span(net.vni, "127.0.0.9", [h2_ip])
    assert joined.h2.spans[net.id] == Span(net.vni, h2_ip, ["127.0.0.9"])
    other = joined.run(svc.networks.create("lan", "10.91.0.0/24"))
    assert other.vni is not None and other.vni != net.vni  # one VNI per network
    joined.run(svc.instances.delete("there", force=True))
    assert local.spans[net.id] is None and net.id not in joined.h2.networks


def test_an_agent_that_comes_back_is_converged_with(joined: Joined) -> None:
    """Part 5: the agent restarts (a new process watches nothing); each reconciler pass asks it
    what runs and brings the store in step, without starting anything twice."""
    svc, h2 = joined.svc, joined.h2
    web, gone, parked = (joined.launch(n, host="h2") for n in ("web", "gone", "parked"))
    op = joined.run(svc.instances.stop("parked"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    joined.run(joined.port.stop())
    del h2.vms[gone]  # its QEMU ended while nobody watched
    h2.vms[parked] = h2.vms[web].__class__(h2.vms[web].spec, h2.vms[web].events, 4242, None)
    joined.port = AgentPort(joined.config, h2)  # the agent again, knowing nothing
    joined.run(joined.port.start())
    changes = joined.run(svc.reconciler.converge_joined())
    assert joined.state(gone) == State.CRASHED
    gone_now = svc.instances.store.get(gone)
    assert gone_now is not None and gone_now.state_reason == "QEMU exited while h2 was away"
    assert joined.state(web) == State.RUNNING and h2.calls.count("adopt") == 1
    assert parked not in h2.vms and joined.state(parked) == State.STOPPED  # the store's intent
    assert len(changes) == 3, changes
    # Nothing is done twice, and web's events flow again through the new agent.
    assert joined.run(svc.reconciler.converge_joined()) == []
    assert h2.calls.count("adopt") == 1 and h2.calls.count("start") == 3  # the launches' own
    joined.run(_call_soon(h2.vms[web].events.on_exit, "stopped", "the guest powered off"))
    _until(lambda: joined.state(web) == State.STOPPED, "web's exit, heard through the new agent")


def test_a_late_exit_of_an_earlier_run_does_not_end_the_new_one(joined: Joined) -> None:
    """From the hostile review: events name the QEMU they came from; an exit of the VM's
    previous QEMU arriving after it was started again is not taken for the new one's."""
    svc, h2 = joined.svc, joined.h2
    web = joined.launch("web", host="h2")
    old = h2.vms[web]
    op = joined.run(svc.instances.stop("web"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    op = joined.run(svc.instances.start("web"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    assert h2.vms[web].pid != old.pid
    joined.run(_call_soon(old.events.on_exit, "crashed", "the old QEMU, late"))
    time.sleep(0.5)  # its report has arrived (the next one, below, comes after it)
    assert joined.state(web) == State.RUNNING
    joined.run(_call_soon(h2.vms[web].events.on_exit, "crashed", "the new QEMU"))
    _until(lambda: joined.state(web) == State.CRASHED, "the new QEMU's own exit")


def test_what_runs_on_a_joined_host_is_admitted_against_that_host(joined: Joined) -> None:
    """From the hostile review: a VM on h2 counted against the control plane's own host (8
    vCPUs here) refused starting a small local one."""
    svc = joined.svc
    svc.hosts.report()
    joined.launch("big", host="h2", cpus=8, memory_mib=8192)
    joined.launch("small", host=svc.hosts.name)
    op = joined.run(svc.instances.stop("small"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    op = joined.run(svc.instances.start("small"))  # 1 of the local 8 vCPUs: admitted
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    # h2 reported 16 CPUs (x2): a second start there of a stopped 8-vCPU VM fits, a third of
    # 20 would not.
    joined.launch("big2", host="h2", cpus=8, memory_mib=8192)
    joined.launch("huge", host="h2", cpus=16, memory_mib=8192)
    op = joined.run(svc.instances.stop("huge"))
    assert joined.run(svc.ops.finished(op.id, 20)).error is None
    joined.launch("more", host="h2", cpus=8, memory_mib=1024)
    with pytest.raises(InsufficientCapacity):
        joined.run(svc.instances.start("huge"))


def test_snapshots_forwards_and_ssh_of_a_joined_hosts_vm_are_refused_first(
    joined: Joined,
) -> None:
    """From the hostile review: a snapshot added a disk layer before it failed; a forward was
    set up on the control plane's host; SSH would have tunnelled into the wrong namespace."""
    svc = joined.svc
    web = joined.launch("web", host="h2")
    layers = len(svc.instances.disks.store.all())
    for memory in (False, True):
        with pytest.raises(InvalidState, match="snapshots are not supported yet"):
            joined.run(svc.snapshots.create("web", "s1", memory=memory))
    assert len(svc.instances.disks.store.all()) == layers
    with pytest.raises(InvalidState, match="forwards are not supported yet"):
        joined.run(svc.forwards.add(web, "2222:22"))
    assert joined.cluster.host.forwards == set()
    with pytest.raises(InvalidState, match="SSH is not supported yet"):
        joined.run(svc.ssh.access("web"))


def test_a_joined_host_away_does_not_hold_up_launches_elsewhere(joined: Joined) -> None:
    """From the hostile review: one host of a network away failed every launch on it."""
    svc = joined.svc
    svc.hosts.report()
    joined.launch("far", host="h2")
    joined.run(joined.port.stop())
    joined.launch("near", host=svc.hosts.name)  # the default network, which far is on too
    assert joined.state(svc.instances.get("near").id) == State.RUNNING
    joined.run(joined.port.start())  # for the fixture's own stop


def test_a_joined_hosts_image_is_checked_once_and_again_after_a_failed_start(
    joined: Joined,
) -> None:
    """Each launch there does not ask the host for the image again; a start there that
    failed does, so a file gone from it is fetched again."""
    joined.launch("one", host="h2")
    kernel = joined.folder.parent / "images" / "tiny" / "v1" / "vmlinuz"
    kernel.unlink()
    joined.launch("two", host="h2")  # not asked again: the fake boots without it
    assert not kernel.exists()
    joined.h2.fail_at, joined.h2.fail_on = "start", joined.h2.calls.count("start") + 1
    req = LaunchRequest(name="three", image="tiny", host="h2")
    _inst, op = joined.run(joined.svc.templates.launch(req, DEFAULT_PROJECT))
    assert "injected failure" in joined.run(joined.svc.ops.finished(op.id, 20)).error["message"]
    joined.launch("four", host="h2")
    assert kernel.exists()  # asked again, and fetched


def test_a_joined_hosts_metadata_service_answers_its_own_vms_only(
    joined: Joined, tmp_path: Path
) -> None:
    """Part 4: h2's agent serves 169.254.169.254 there, asking the control plane who owns the
    address with the MAC it resolves to on h2; only a VM placed on h2, with that very MAC, is
    answered, and another host asking about it learns nothing."""
    svc = joined.svc
    there = joined.launch("there", host="h2", user_data="#cloud-config\n")
    here = joined.launch("here", host=svc.hosts.name)
    net = svc.networks.get("default", DEFAULT_PROJECT)
    (far,) = svc.networks.store.nics(instance_id=there)
    (near,) = svc.networks.store.nics(instance_id=here)
    lookup = joined.h2.lookup  # set by h2's agent: its metadata servers' lookup
    assert lookup is not None
    joined.h2.neighbours[(net.id, far.ip)] = far.mac.upper()
    caller = joined.run(lookup(net.id, far.ip))
    assert caller is not None
    assert (caller.instance_id, caller.hostname, caller.ip) == (there, "there", far.ip)
    assert caller.user_data == "#cloud-config\n"
    # A VM of the control plane's host, even with its own MAC seen on h2: not h2's to serve.
    joined.h2.neighbours[(net.id, near.ip)] = near.mac
    assert joined.run(lookup(net.id, near.ip)) is None
    # Another MAC at the address (a spoof the firewall let through, say), or none: nobody.
    joined.h2.neighbours[(net.id, "10.0.0.250")] = far.mac
    assert joined.run(lookup(net.id, "10.0.0.250")) is None
    assert joined.run(lookup(net.id, "10.0.0.251")) is None
    # h3, another enrolled host, asking about h2's VM with the right MAC: nothing.
    folder3, _ = _joined(joined.cluster, tmp_path, "h3")
    address = joined.cluster.enrolment.cluster_listen
    question = {"op": "metadata", "network": net.id, "ip": far.ip, "mac": far.mac}
    assert agent.ask(address, question, agent.own_context(folder3)) == {"caller": None}
    # Questions that are not one are refused as such.
    for bad in ({"network": "n-x"}, {"ip": "10.0.0.999"}, {"mac": "aa:bb"}, {"ip": ["x"]}):
        with pytest.raises(InvalidInput):
            agent.ask(address, {**question, **bad}, agent.own_context(folder3))


def test_a_joined_host_filled_meanwhile_refuses_the_launch_placed_on_it(joined: Joined) -> None:
    """Placement chose h2 from the store as it was; before this launch is written another
    control plane's instance fills h2 (32 vCPUs: all it has). The store's transaction checks
    h2 again under its lock and refuses; nothing of the launch is left."""
    svc = joined.svc
    store = svc.instances.store
    write = store.create

    def filled_first(inst, *args, **kwargs):  # type: ignore[no-untyped-def]
        theirs = Instance(id="i-0000000000bb", spec=InstanceSpec("theirs", "tiny", 32, 256,
                          1 << 30), state=State.RUNNING, created_at=0.0, image_version="v1",
                          host="h2")  # fmt: skip
        store.insert(theirs)
        return write(inst, *args, **kwargs)

    store.create = filled_first  # type: ignore[method-assign]
    with pytest.raises(InsufficientCapacity):
        joined.launch("web", host="h2", cpus=2)
    assert [i.name for i in svc.instances.list()] == ["theirs"]
    assert not joined.h2.vms


def test_two_launches_at_once_are_not_both_placed_on_a_joined_hosts_last_room(
    joined: Joined,
) -> None:
    """h2 has room for one more 6-vCPU instance and placement packs: of two launches at
    once, the first placed on h2 counts there until it is written, so the second is placed
    on the control plane's own host, not refused at its write."""
    svc = joined.svc
    svc.hosts.strategy = "pack"
    joined.launch("filler", host="h2", cpus=24)  # of h2's 32
    creator = svc.instances.creator
    insert = creator.insert

    async def slow_insert(draft, undo):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.2)  # its network being made, say: both are placed meanwhile
        return await insert(draft, undo)

    creator.insert = slow_insert  # type: ignore[method-assign]

    async def both() -> list[str | None]:
        async def one(name: str) -> str | None:
            req = LaunchRequest(name=name, image="tiny", cpus=6, memory_mib=256)
            inst, op = await svc.templates.launch(req, DEFAULT_PROJECT)
            done = await svc.ops.finished(op.id, 20)
            assert done.error is None, done.error
            return inst.host

        return list(await asyncio.gather(one("a"), one("b")))

    assert sorted(joined.run(both()), key=str) == sorted(["h2", svc.hosts.name], key=str)
