"""Networks, NICs, security groups and port forwards tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from gureum.errors import Conflict
from gureum.model.network import Forward, Network, Nic, Rule, SecGroup
from gureum.store.db import Database
from gureum.store.schema import (
    forwards,
    instance_secgroups,
    instances,
    networks,
    nics,
    secgroup_rules,
    secgroups,
)


class NetworkStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- helpers ---------------------------------------------------------------------------------
    def _insert(self, table: Table, values: dict[str, Any], conflict: str) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(insert(table).values(**values))
        except IntegrityError as exc:
            raise Conflict(conflict) from exc

    def _rows(self, query: Any, make: Callable[..., Any]) -> list[Any]:
        with self.db.read() as conn:
            return [make(**dict(r)) for r in conn.execute(query).mappings()]

    # -- networks --------------------------------------------------------------------------------
    def add_network(self, net: Network) -> Network:
        """Record a new network; it, with the VXLAN id the store gave it (the next unused)."""
        vni = select(func.coalesce(func.max(networks.c.vni), 0) + 1).scalar_subquery()
        values = {
            **net.__dict__,
            "nat": int(net.nat),
            "imds_tokens_required": int(net.imds_tokens_required),
            "vni": vni,
        }
        self._insert(
            networks, values, f"a network named {net.name!r} already exists in this project"
        )
        made = self.network(net.id)
        assert made is not None
        return made

    def networks(self, project_id: str | None = None) -> list[Network]:
        def make(**r: Any) -> Network:
            return Network(
                **{
                    **r,
                    "nat": bool(r["nat"]),
                    "imds_tokens_required": bool(r["imds_tokens_required"]),
                }
            )

        query = select(networks).order_by(networks.c.created_at)
        if project_id is not None:
            query = query.where(networks.c.project_id == project_id)
        return self._rows(query, make)

    def network(self, ref: str, project_id: str | None = None) -> Network | None:
        """By id, or by name within a project."""
        for net in self.networks(project_id):
            if net.id == ref or (project_id is not None and net.name == ref):
                return net
        return None

    def remove_network(self, network_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(networks).where(networks.c.id == network_id))

    # -- NICs ------------------------------------------------------------------------------------
    def add_nic(self, nic: Nic, conn: Connection | None = None) -> None:
        self._insert(nics, nic.__dict__, f"address {nic.ip} or MAC {nic.mac} is already taken")

    def nics(
        self,
        *,
        instance_id: str | None = None,
        network_id: str | None = None,
        ip: str | None = None,
    ) -> list[Nic]:
        query = select(nics).order_by(nics.c.created_at, nics.c.id)
        if instance_id is not None:
            query = query.where(nics.c.instance_id == instance_id)
        if network_id is not None:
            query = query.where(nics.c.network_id == network_id)
        if ip is not None:
            query = query.where(nics.c.ip == ip)
        return self._rows(query, Nic)

    def remove_nic(self, nic_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(nics).where(nics.c.id == nic_id))

    # -- security groups -------------------------------------------------------------------------
    def add_group(self, group: SecGroup) -> None:
        values = {
            "id": group.id,
            "project_id": group.project_id,
            "name": group.name,
            "created_at": group.created_at,
        }
        self._insert(secgroups, values, f"a security group named {group.name!r} already exists")

    def groups(self, project_id: str | None = None) -> list[SecGroup]:
        query = select(secgroups).order_by(secgroups.c.created_at)
        if project_id is not None:
            query = query.where(secgroups.c.project_id == project_id)
        groups = self._rows(query, SecGroup)
        rules = self._rows(select(secgroup_rules).order_by(secgroup_rules.c.created_at), Rule)
        by_id = {g.id: g for g in groups}
        for rule in rules:
            if rule.secgroup_id in by_id:
                by_id[rule.secgroup_id].rules.append(rule)
        return groups

    def group(self, ref: str, project_id: str | None = None) -> SecGroup | None:
        for group in self.groups(project_id):
            if group.id == ref or (project_id is not None and group.name == ref):
                return group
        return None

    def remove_group(self, group_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(secgroup_rules).where(secgroup_rules.c.secgroup_id == group_id))
            conn.execute(delete(secgroups).where(secgroups.c.id == group_id))

    def add_rule(self, rule: Rule) -> None:
        self._insert(secgroup_rules, rule.__dict__, "rule already exists")

    def remove_rule(self, rule_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(secgroup_rules).where(secgroup_rules.c.id == rule_id))

    def set_instance_groups(self, instance_id: str, group_ids: list[str]) -> None:
        with self.db.begin() as conn:
            conn.execute(
                delete(instance_secgroups).where(instance_secgroups.c.instance_id == instance_id)
            )
            for gid in group_ids:
                conn.execute(
                    insert(instance_secgroups).values(instance_id=instance_id, secgroup_id=gid)
                )

    def group_names_of(self, instance_id: str | None = None) -> dict[str, list[str]]:
        """instance id -> the names of its security groups (of one instance, or all)."""
        query = select(instance_secgroups.c.instance_id, secgroups.c.name).join(
            secgroups, secgroups.c.id == instance_secgroups.c.secgroup_id
        )
        if instance_id is not None:
            query = query.where(instance_secgroups.c.instance_id == instance_id)
        out: dict[str, list[str]] = {}
        with self.db.read() as conn:
            for iid, name in conn.execute(query.order_by(secgroups.c.name)):
                out.setdefault(iid, []).append(name)
        return out

    def nics_with_network(self, instance_id: str | None = None) -> list[tuple[Nic, str]]:
        """NICs (of one instance, or all) with their network's name."""
        query = select(nics, networks.c.name.label("network_name")).join(
            networks, networks.c.id == nics.c.network_id
        )
        if instance_id is not None:
            query = query.where(nics.c.instance_id == instance_id)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(nics.c.created_at, nics.c.id)).mappings().all()
        out = []
        for row in rows:
            values = dict(row)
            name = values.pop("network_name")
            out.append((Nic(**values), name))
        return out

    def instance_groups(self) -> dict[str, list[str]]:
        """instance id -> its security group ids."""
        out: dict[str, list[str]] = {}
        with self.db.read() as conn:
            for iid, gid in conn.execute(
                select(instance_secgroups.c.instance_id, instance_secgroups.c.secgroup_id)
            ):
                out.setdefault(iid, []).append(gid)
        return out

    # -- forwards --------------------------------------------------------------------------------
    def add_forward(self, fwd: Forward) -> None:
        self._insert(
            forwards, fwd.__dict__, f"port {fwd.host_address}:{fwd.host_port} is already forwarded"
        )

    def forwards(self, instance_id: str | None = None) -> list[Forward]:
        query = select(forwards).order_by(forwards.c.created_at)
        if instance_id is not None:
            query = query.where(forwards.c.instance_id == instance_id)
        return self._rows(query, Forward)

    def forward_count(self, project_id: str) -> int:
        """How many port forwards a project's instances have, together."""
        query = (
            select(func.count())
            .select_from(forwards)
            .join(instances, instances.c.id == forwards.c.instance_id)
            .where(instances.c.project_id == project_id)
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def remove_forward(self, forward_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(forwards).where(forwards.c.id == forward_id))

    def forget_instance(self, instance_id: str) -> None:
        """Everything network-side of a deleted instance."""
        with self.db.begin() as conn:
            conn.execute(delete(nics).where(nics.c.instance_id == instance_id))
            conn.execute(delete(forwards).where(forwards.c.instance_id == instance_id))
            conn.execute(
                delete(instance_secgroups).where(instance_secgroups.c.instance_id == instance_id)
            )
