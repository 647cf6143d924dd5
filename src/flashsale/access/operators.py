"""Operator keys: named, with a role, configured by their SHA-256 (the secret is never stored).

`API_KEYS` is a comma-separated list of `name:role:sha256:<64 hex digits>`; `API_KEY` (the older
setting) is one more admin key named `api-key`. `flashsale keys new` makes a key and prints its
line. A presented key is hashed once and compared with every configured digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)
# `.env.example`'s value: a copied example must never become a working key.
PLACEHOLDER_KEY = "change-me-to-a-long-random-secret"
MIN_KEY_LENGTH = 32
LEGACY_KEY_NAME = "api-key"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class OperatorKey:
    name: str
    role: Role
    sha256: bytes

    @property
    def line(self) -> str:
        """The key's entry in API_KEYS."""
        return f"{self.name}:{self.role}:sha256:{self.sha256.hex()}"


def parse_api_keys(text: str) -> tuple[OperatorKey, ...]:
    """API_KEYS's entries; ValueError naming the first bad one."""
    keys: list[OperatorKey] = []
    for number, entry in enumerate((part.strip() for part in text.split(",")), start=1):
        if not entry:
            continue
        fields = entry.split(":")
        if len(fields) != 4 or fields[2] != "sha256":
            raise ValueError(f"entry {number} is not name:role:sha256:<hex>")
        name, role, _, hex_digest = fields
        if not _NAME.match(name):
            raise ValueError(f"entry {number}: a name is 1-64 of A-Z a-z 0-9 _ . -")
        if role not in ROLES:
            raise ValueError(f"entry {number}: the role must be admin or viewer")
        if not _DIGEST.match(hex_digest):
            raise ValueError(f"entry {number}: the digest must be 64 hex digits")
        keys.append(OperatorKey(name, role, bytes.fromhex(hex_digest)))
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise ValueError("a name is used twice")
    if len({key.sha256 for key in keys}) != len(keys):
        raise ValueError("a key is configured twice")
    return tuple(keys)


def new_key(name: str, role: Role) -> tuple[str, OperatorKey]:
    """A new random secret (256 bits) and its configuration entry."""
    if not _NAME.match(name):
        raise ValueError("a name is 1-64 of A-Z a-z 0-9 _ . -")
    secret = f"fsk_{secrets.token_urlsafe(32)}"
    return secret, OperatorKey(name, role, digest(secret))


class OperatorKeys:
    """The configured keys of one server; `find` answers which one a secret is."""

    def __init__(self, keys: tuple[OperatorKey, ...]) -> None:
        self._keys = keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def find(self, secret: str) -> OperatorKey | None:
        presented = digest(secret)
        found = None
        for key in self._keys:  # every digest is compared: the time says nothing of which
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found
