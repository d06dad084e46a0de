"""The service's own key, for the few secrets it must be able to read back.

An AWS secret access key cannot be kept as a hash, as gureum's tokens are: SigV4 signs with it,
so the service must compute the same signature. It is kept sealed (Fernet: AES-128-CBC with an
HMAC-SHA256, from ``cryptography``) with a key that lives in a file of its own under the home
(``keys/service.key``, 0600, made at first use), not in the database: a copy of the database
alone (a backup, a leak, a replica) does not give the secrets usable.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from gureum.errors import GureumError


class ServiceKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:  # made once, atomically: two starts never make two keys
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
            self._fernet = Fernet(self.path.read_bytes().strip())
        return self._fernet

    def seal(self, text: str) -> str:
        return self._key().encrypt(text.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._key().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise GureumError(
                f"a sealed secret does not open with {self.path}: was the key replaced?"
            ) from None
