"""Projects' SSH key pairs: public keys kept under a name, for launches to name (``--keypair``),
as EC2's key pairs. A launch copies the keys into the instance: deleting a key pair later does
not take access away from the VMs made with it (it never does on EC2 either)."""

from __future__ import annotations

import time

from gureum.errors import InvalidInput, NotFound, QuotaExceeded
from gureum.ids import check_name, new_id
from gureum.model.sshkeys import KeyPair, fingerprint, public_key
from gureum.store.keypairs import KeyPairStore

MAX_PER_PROJECT = 100  # a bound, so that a tenant cannot grow the store without end


class KeyPairService:
    def __init__(self, store: KeyPairStore) -> None:
        self.store = store

    def list(self, project_id: str) -> list[KeyPair]:
        return self.store.list(project_id)

    def get(self, ref: str, project_id: str) -> KeyPair:
        for pair in self.store.list(project_id):
            if ref in (pair.id, pair.name):
                return pair
        raise NotFound(f"no key pair named {ref!r}")

    def add(self, name: str, key: str, project_id: str) -> KeyPair:
        check_name(name, what="key pair name")
        checked = public_key(key, keep_comment=True)
        if checked is None:
            # Not echoed: a pasted private key must not end up in an error or a log.
            raise InvalidInput(
                "a key pair is an OpenSSH public key: the .pub file's one line "
                "(ssh-ed25519 AAAA... comment), never the private key"
            )
        if self.store.count(project_id) >= MAX_PER_PROJECT:
            raise QuotaExceeded(f"a project keeps at most {MAX_PER_PROJECT} key pairs")
        pair = KeyPair(new_id("kp-"), project_id, name, checked, fingerprint(checked), time.time())
        self.store.add(pair)
        return pair

    def delete(self, ref: str, project_id: str) -> KeyPair:
        pair = self.get(ref, project_id)
        self.store.remove(pair.id)
        return pair

    def keys(self, refs: tuple[str, ...], project_id: str) -> tuple[str, ...]:
        """The public keys of the named key pairs (NotFound for one that is not there)."""
        return tuple(self.get(ref, project_id).public_key for ref in refs)
