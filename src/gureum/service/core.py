"""Wiring: the one object that holds the store, the host agent and every service."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass

from gureum.config import Config
from gureum.errors import Conflict, InvalidInput
from gureum.host import permissions
from gureum.host.agent import LocalHostAgent
from gureum.ids import new_id
from gureum.model.instance import ACTIVE
from gureum.service.backups import BackupService
from gureum.service.forwards import ForwardService
from gureum.service.images import ImageService
from gureum.service.instances import InstanceService
from gureum.service.networks import NetworkService
from gureum.service.nics import NicService
from gureum.service.operations import OperationManager
from gureum.service.quotas import QuotaService
from gureum.service.reconciler import Reconciler
from gureum.service.resize import ResizeService
from gureum.service.secgroups import SecGroupService
from gureum.service.snapshots import SnapshotService
from gureum.service.tenancy import TenancyService
from gureum.store.db import Database
from gureum.store.images import ImageStore
from gureum.store.instances import InstanceStore
from gureum.store.layers import LayerStore, SnapshotStore
from gureum.store.networks import NetworkStore
from gureum.store.operations import OperationStore
from gureum.store.tenancy import TenancyStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    db: Database
    host: LocalHostAgent
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
    tenancy: TenancyService
    quotas: QuotaService
    _lock_fd: int | None = None

    @classmethod
    def build(cls, config: Config) -> Services:
        # Unix socket paths are limited to 107 bytes; each VM's live under run/<id>/.
        longest = config.run_dir / new_id("i-") / "serial.sock"
        if len(str(longest).encode()) > 107:
            raise InvalidInput(
                f"GUREUM_HOME {config.home} is too long: VM socket paths under it would exceed "
                "the 107-byte limit of unix sockets; use a shorter path"
            )
        for folder in (
            config.home,
            config.run_dir,
            config.instances_dir,
            config.images_dir,
            config.cache_dir,
            config.disks_dir,
            config.snapshots_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        # The home and the folders VMs' files are in are 0711 (crossable, not listable: each
        # QEMU runs as its own user and opens its own files by path); all else is 0600/0700.
        permissions.crossable(
            config.home, config.run_dir, config.disks_dir, config.snapshots_dir,
            config.instances_dir,
        )  # fmt: skip
        os.chmod(config.cache_dir, 0o700)
        db = (
            Database.open_url(config.database_url)
            if config.database_url
            else Database.open_sqlite(config.db_path)
        )
        instance_store = InstanceStore(db)
        ops = OperationManager(OperationStore(db))
        images = ImageService(config, ImageStore(db), instance_store, ops)
        host = LocalHostAgent(config)
        instances = InstanceService(
            config, instance_store, images, host, ops, LayerStore(db), SnapshotStore(db)
        )
        network_store = NetworkStore(db)
        tenancy_store = TenancyStore(db)
        tenancy = TenancyService(tenancy_store, max_tokens_per_user=config.max_tokens_per_user)
        quotas = QuotaService(
            tenancy_store,
            instance_store,
            instances.snapshots,
            network_store,
            instances.layers,
            host,
        )
        instances.quotas = quotas
        networks = NetworkService(host, network_store, instance_store)
        networks.quotas = quotas
        secgroups = SecGroupService(network_store, networks)
        forwards = ForwardService(
            host.network, network_store, instance_store, min_host_port=config.forward_min_host_port
        )
        forwards.quotas = quotas
        instances.networks, instances.secgroups, instances.forwards = networks, secgroups, forwards
        snapshots = SnapshotService(instances)
        nics = NicService(instances)
        resize = ResizeService(instances)
        backups = BackupService(instances, snapshots)
        reconciler = Reconciler(
            instances,
            config.reconcile_interval_s,
            chores=[lambda: tenancy.prune_audit(config.audit_retention_days)],
        )
        return cls(
            config,
            db,
            host,
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
            tenancy,
            quotas,
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
        await self.quotas.apply_all()
        await self.networks.ensure_all()
        report = await self.reconciler.start()
        await self.forwards.start_all()
        return report

    def close(self) -> None:
        """Release what a service built but never started holds (tests, tools): the store's
        connections and the control groups made for projects."""
        self.host.tidy_projects()
        self.db.close()

    async def stop(self) -> None:
        """Stop the service, never the VMs: they keep running and are re-adopted next start."""
        await self.reconciler.stop()
        await self.ops.shutdown()
        await self.host.network.close()
        # Networks stay while VMs run (their TAPs are in them); with none, nothing is left.
        active = any(i.state in ACTIVE for i in self.instances.list())
        await self.networks.teardown_if_idle(active)
        self.host.tidy_projects()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
