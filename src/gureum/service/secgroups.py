"""Security groups: default deny inbound, except from the same group or what a rule lets in.

Every VM is in at least one group (``default`` unless it says otherwise). Changes apply at once
to running VMs: every network's firewall is re-rendered and swapped atomically.
"""

from __future__ import annotations

import builtins
import ipaddress
import time

from gureum.errors import Conflict, InvalidInput, NotFound, found
from gureum.ids import check_name, new_id
from gureum.model.instance import DEFAULT_PROJECT, Instance
from gureum.model.network import PROTOCOLS, Rule, SecGroup
from gureum.service.networks import DEFAULT_GROUP, NetworkService
from gureum.store.networks import NetworkStore


def parse_ingress(spec: str) -> tuple[str, int | None, int | None]:
    """``tcp/80``, ``tcp/8000-8080``, ``udp/53``, ``icmp``, ``all`` -> (protocol, from, to)."""
    proto, _, ports = spec.partition("/")
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise InvalidInput(f"protocol must be one of {', '.join(PROTOCOLS)}, not {proto!r}")
    if not ports:
        return proto, None, None
    if proto in ("icmp", "all"):
        raise InvalidInput(f"{proto} has no ports")
    low, _, high = ports.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError as exc:
        raise InvalidInput(f"invalid port range {ports!r}") from exc
    if not 1 <= first <= last <= 65535:
        raise InvalidInput(f"ports must be 1 to 65535, low to high, not {ports!r}")
    return proto, first, last


class SecGroupService:
    def __init__(self, store: NetworkStore, networks: NetworkService) -> None:
        self.store = store
        self.networks = networks

    def list(self, project_id: str | None = None) -> list[SecGroup]:
        return self.store.groups(project_id)

    def get(self, ref: str, project_id: str | None = None) -> SecGroup:
        return found(self.store.group(ref, project_id), f"security group named {ref!r}")

    def view(self, group: SecGroup) -> dict[str, object]:
        names = {g.id: g.name for g in self.store.groups()}
        members = [iid for iid, gids in self.store.instance_groups().items() if group.id in gids]
        return {
            "id": group.id,
            "name": group.name,
            "rules": [
                {
                    "id": r.id,
                    "protocol": r.protocol,
                    "port_from": r.port_from,
                    "port_to": r.port_to,
                    "cidr": r.cidr,
                    "source_group": names.get(r.source_group or "", r.source_group),
                    "text": r.describe(names),
                }
                for r in group.rules
            ],
            "instances": len(members),
            "created_at": group.created_at,
        }

    def create(self, name: str, project_id: str = DEFAULT_PROJECT) -> SecGroup:
        check_name(name, what="security group name")
        group = SecGroup(new_id("sg-"), project_id, name, time.time())
        self.store.add_group(group)
        return group

    def default(self, project_id: str = DEFAULT_PROJECT) -> SecGroup:
        group = self.store.group(DEFAULT_GROUP, project_id)
        if group is None:
            try:
                group = self.create(DEFAULT_GROUP, project_id)
            except Conflict:
                group = self.get(DEFAULT_GROUP, project_id)
        return group

    async def delete(self, ref: str, project_id: str | None = None) -> SecGroup:
        group = self.get(ref, project_id)
        users = [iid for iid, gids in self.store.instance_groups().items() if group.id in gids]
        if users:
            names = self.networks._names()
            shown = ", ".join(sorted(names.get(iid, iid) for iid in users))
            raise Conflict(
                f"security group {group.name} is in use by {shown}; detach or delete them first"
            )
        # Its own rules go with it (one naming the group itself too); another group's rule
        # naming it would be left pointing at nothing.
        naming = sorted(
            {g.name for g in self.store.groups() if g.id != group.id
             for r in g.rules if r.source_group == group.id}
        )  # fmt: skip
        if naming:
            raise Conflict(
                f"security group {group.name} is named as a source by a rule of "
                f"{', '.join(naming)}; remove that rule first"
            )
        self.store.remove_group(group.id)
        return group

    # -- an instance's groups, changed while it runs ----------------------------------------------
    async def attach(self, inst: Instance, ref: str) -> builtins.list[str]:
        """Put the instance in one more group; its ports' firewall changes at once."""
        group = self.get(ref, inst.project_id)
        current = self.store.instance_groups().get(inst.id, [])
        if group.id in current:
            raise Conflict(f"{inst.name} is already in security group {group.name}")
        self.store.set_instance_groups(inst.id, [*current, group.id])
        await self.networks.sync_instance(inst.id)
        return self.store.group_names_of(inst.id).get(inst.id, [])

    async def detach(self, inst: Instance, ref: str) -> builtins.list[str]:
        """Take the instance out of a group; it stays in at least one (default deny)."""
        group = self.get(ref, inst.project_id)
        current = self.store.instance_groups().get(inst.id, [])
        if group.id not in current:
            raise NotFound(f"{inst.name} is not in security group {group.name}")
        if len(current) == 1:
            raise Conflict(
                f"{group.name} is {inst.name}'s only security group; attach another one first"
            )
        self.store.set_instance_groups(inst.id, [g for g in current if g != group.id])
        await self.networks.sync_instance(inst.id)
        return self.store.group_names_of(inst.id).get(inst.id, [])

    async def add_rule(
        self,
        ref: str,
        ingress: str,
        *,
        cidr: str | None = None,
        source_group: str | None = None,
        project_id: str | None = None,
    ) -> Rule:
        group = self.get(ref, project_id)
        proto, first, last = parse_ingress(ingress)
        if (cidr is None) == (source_group is None):
            raise InvalidInput("say where traffic may come from: --from CIDR or --from-group NAME")
        if cidr is not None:
            try:
                cidr = str(ipaddress.IPv4Network(cidr, strict=False))
            except ValueError as exc:
                raise InvalidInput(f"invalid source CIDR {cidr!r}") from exc
        source_id = self.get(source_group, group.project_id).id if source_group else None
        rule = Rule(new_id("r-"), group.id, proto, first, last, cidr, source_id, time.time())
        self.store.add_rule(rule)
        await self.networks.sync_all()  # live: every network's firewall, swapped atomically
        return rule

    async def remove_rule(self, ref: str, rule_id: str, project_id: str | None = None) -> Rule:
        group = self.get(ref, project_id)
        rule = next((r for r in group.rules if r.id == rule_id), None)
        if rule is None:
            raise NotFound(f"security group {group.name} has no rule {rule_id!r}")
        self.store.remove_rule(rule.id)
        await self.networks.sync_all()
        return rule

    def resolve(
        self, refs: builtins.list[str] | None, project_id: str = DEFAULT_PROJECT
    ) -> builtins.list[str]:
        """Group ids for a launch: the named ones, or the project's default group."""
        if not refs:
            return [self.default(project_id).id]
        return [self.get(r, project_id).id for r in refs]
