"""Wiring: the one object that holds the store, the host agent and every service."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass

from gureum.config import Config
from gureum.errors import Conflict, InvalidInput
from gureum.host.agent import LocalHostAgent
from gureum.host.interface import HostAgent
from gureum.ids import new_id
from gureum.model.instance import ACTIVE
from gureum.service.admission import Admission
from gureum.service.agents import Agents
from gureum.service.backups import BackupService
from gureum.service.cluster_ca import ClusterCA
from gureum.service.creation import Creator
from gureum.service.disks import DiskLayers
from gureum.service.enrolment import EnrolmentService
from gureum.service.events import EventBus
from gureum.service.forwards import ForwardService
from gureum.service.guest_ssh import GuestSsh
from gureum.service.host_router import HostRouter
from gureum.service.hosts import HostService, local_host_name
from gureum.service.image_capture import ImageCapture
from gureum.service.images import ImageService
from gureum.service.instances import InstanceService
from gureum.service.keypairs import KeyPairService
from gureum.service.keyring import ServiceKey
from gureum.service.lifecycle import Lifecycle
from gureum.service.metrics import MetricsService
from gureum.service.networks import NetworkService
from gureum.service.nics import NicService
from gureum.service.operations import OperationManager
from gureum.service.pool import Pool
from gureum.service.quotas import QuotaService
from gureum.service.reconciler import Reconciler
from gureum.service.resize import ResizeService
from gureum.service.secgroups import SecGroupService
from gureum.service.snapshots import SnapshotService
from gureum.service.tags import TagService
from gureum.service.templates import TemplateService
from gureum.service.tenancy import TenancyService
from gureum.service.transfers import Transfers
from gureum.service.views import InstanceViews
from gureum.service.work_runner import WorkRunner
from gureum.store.db import Database
from gureum.store.hosts import HostStore
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore
from gureum.store.keypairs import KeyPairStore
from gureum.store.layers import LayerStore, SnapshotStore
from gureum.store.networks import NetworkStore
from gureum.store.operations import OperationStore
from gureum.store.settings import SettingsStore
from gureum.store.tags import TagStore
from gureum.store.templates import TemplateStore
from gureum.store.tenancy import TenancyStore
from gureum.store.work import WorkQueue

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    db: Database
    host: HostAgent
    ops: OperationManager
    images: ImageService
    instances: InstanceService
    snapshots: SnapshotService
    resize: ResizeService
    backups: BackupService
    reconciler: Reconciler
    networks: NetworkService
    secgroups: SecGroupService
    forwards: ForwardService
    nics: NicService
    ssh: GuestSsh
    keypairs: KeyPairService
    tenancy: TenancyService
    quotas: QuotaService
    templates: TemplateService
    events: EventBus
    metrics: MetricsService
    tags: TagService
    capture: ImageCapture
    hosts: HostService
    enrolment: EnrolmentService
    agents: Agents
    router: HostRouter  # what the services hold: ``host``, or a joined host's agent
    _lock_fd: int | None = None

    @classmethod
    def build(cls, config: Config, host: HostAgent | None = None) -> Services:
        """Every service, each given what it works with. ``host``: this machine's agent
        unless another is given (the unit tests give a ``FakeHost``)."""
        # Unix socket paths are limited to 107 bytes; each VM's live under run/<id>/.
        longest = config.run_dir / new_id("i-") / "serial.sock"
        if len(str(longest).encode()) > 107:
            raise InvalidInput(
                f"GUREUM_HOME {config.home} is too long: VM socket paths under it would exceed "
                "the 107-byte limit of unix sockets; use a shorter path"
            )
        local = host or LocalHostAgent(config)
        local.prepare()
        db = (
            Database.open_url(config.database_url)
            if config.database_url
            else Database.open_sqlite(config.db_path)
        )
        # The store.
        instance_store = InstanceStore(db)
        layer_store, snapshot_store = LayerStore(db), SnapshotStore(db)
        network_store = NetworkStore(db)
        tenancy_store = TenancyStore(db)
        # The host each call is for: this one, or a joined host's agent (issue 17).
        host_store = HostStore(db)
        cluster_ca = ClusterCA(config.cluster_dir)
        agents = Agents(cluster_ca, host_store)
        host = HostRouter(
            local, instance_store, agents, local_host_name(config), config.cluster_listen
        )
        # Rules that need only the store and the host.
        events = EventBus()  # what changed, as it changes: the console's and `gureum events`'
        ops = OperationManager(OperationStore(db), events, local_host_name(config))
        image_store = ImageStore(db)
        transfers = Transfers()  # uploads and downloads, backups and images together
        images = ImageService(config, image_store, instance_store, ops, host, transfers)
        tenancy = TenancyService(
            tenancy_store,
            max_tokens_per_user=config.max_tokens_per_user,
            events=events,
            keyring=ServiceKey(config.home / "keys" / "service.key"),
        )
        quotas = QuotaService(
            tenancy_store, instance_store, snapshot_store, network_store, layer_store,
            image_store, host,
        )  # fmt: skip
        networks = NetworkService(host, network_store, instance_store, quotas)
        secgroups = SecGroupService(network_store, networks)
        forwards = ForwardService(networks, min_host_port=config.forward_min_host_port)
        keypairs = KeyPairService(KeyPairStore(db))
        # An instance's parts, then the use cases built from them.
        admission = Admission(instance_store, host)
        disks = DiskLayers(config, layer_store, snapshot_store, instance_store, images, host)
        hosts = HostService(config, host_store, instance_store, admission, host)
        enrolment = EnrolmentService(
            cluster_ca, host_store, config.cluster_listen, hosts.control_planes
        )
        views = InstanceViews(
            layer_store, snapshot_store, network_store, forwards, quotas, host, hosts
        )
        lifecycle = Lifecycle(config, instance_store, host, ops, disks, networks, views, events)
        creator = Creator(instance_store, admission, quotas, networks, disks, host, events, hosts)
        work = WorkRunner(WorkQueue(db), ops, local_host_name(config), config.work_lease_s)
        for kind in ("launch", "start"):
            work.resumes(kind, lifecycle.resume_boot)
        work.resumes("restart", lifecycle.resume_restart)
        work.resumes("stop", lifecycle.stop)
        instances = InstanceService(
            config, instance_store, snapshot_store, images, host, ops, admission, networks,
            secgroups, forwards, disks, lifecycle, views, creator, keypairs, work,
        )  # fmt: skip
        snapshots = SnapshotService(
            snapshot_store, instances, lifecycle, disks, admission, quotas, networks, secgroups,
            creator, ops, host,
        )  # fmt: skip
        template_store = TemplateStore(db)
        pool = Pool(
            SettingsStore(db), template_store, image_store, snapshot_store, instance_store,
            disks, admission, host,
        )  # fmt: skip
        templates = TemplateService(
            template_store, tenancy_store, images, instances, snapshots, lifecycle, networks, ops,
            pool, auto=config.auto_templates,
        )  # fmt: skip
        nics = NicService(instances, lifecycle, admission, networks, forwards, host)
        ssh = GuestSsh(instances, forwards, host)
        resize = ResizeService(instances, lifecycle, disks, admission, quotas, ops, host)
        backups = BackupService(
            instances, snapshots, creator, networks, secgroups, lifecycle, disks, ops, host,
            transfers,
        )  # fmt: skip
        reconciler = Reconciler(
            instances,
            lifecycle,
            disks,
            host,
            config.reconcile_interval_s,
            chores=[lambda: tenancy.prune_audit(config.audit_retention_days)],
            heartbeat=hosts.heartbeat,
            joined=hosts.joined,
            work=work,
        )
        capture = ImageCapture(images, instances, snapshots, disks, admission, quotas, ops, host)
        tags = TagService(TagStore(db))
        metrics = MetricsService(
            instance_store, tenancy_store, quotas, admission, host, config.metrics_interval_s
        )
        return cls(
            config,
            db,
            local,
            ops,
            images,
            instances,
            snapshots,
            resize,
            backups,
            reconciler,
            networks,
            secgroups,
            forwards,
            nics,
            ssh,
            keypairs,
            tenancy,
            quotas,
            templates,
            events,
            metrics,
            tags,
            capture,
            hosts,
            enrolment,
            agents,
            host,
        )

    def lock_home(self) -> None:
        """One service per home: two would fight over the same VMs."""
        fd = os.open(
            self.config.home / "service.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(
                f"another gureum service is already running for {self.config.home}"
            ) from None
        self._lock_fd = fd

    async def start(self) -> dict[str, list[str]]:
        interrupted = self.ops.interrupt_stale()
        if interrupted:
            log.warning("%d operation(s) were cut short by the last shutdown", interrupted)
        self.tenancy.ensure_default()
        self.hosts.report()
        await self.quotas.apply_all()
        await self.networks.ensure_all()
        report = await self.reconciler.start()
        report["changed"] += await self.templates.drop_orphans()
        await self.forwards.start_all()
        report["autostarted"] = await self.instances.autostart()
        self.templates.pool.start()  # after the leftovers of the last run are gone
        self.metrics.start()
        return report

    def close(self) -> None:
        """Release what a service built but never started holds (tests, tools): the store's
        connections and the control groups made for projects."""
        self.host.tidy_projects()
        self.db.close()

    async def stop(self) -> None:
        """Stop the service, never the VMs: they keep running and are re-adopted next start."""
        await self.metrics.stop()
        await self.reconciler.stop()
        await self.templates.pool.close()
        await self.ops.shutdown()
        await self.host.close_networks()
        # Networks stay while VMs run (their TAPs are in them); with none, nothing is left.
        active = any(i.state in ACTIVE for i in self.instances.list())
        await self.networks.teardown_if_idle(active)
        self.host.tidy_projects()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
