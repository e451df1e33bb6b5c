"""The console's users: a name, a role, an argon2id hash of the password.

Roles are cumulative, as the node API's tokens (ADR 0004): `monitor` reads, `control` also
acts on modules (commands, checker switches, verify), `admin` also installs and uninstalls
modules and manages the registered clusters. A user acts on a cluster with that cluster's token
and on the user's behalf (`X-Hakit-On-Behalf-Of`), so the console never gives a user more than
the user's role, nor more than the token's.
"""

from __future__ import annotations

import time
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hakit.console.store import ConsoleError, Store, check_name

ROLES = ("monitor", "control", "admin")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
# argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: t=3, 64 MiB, p=4)
_hasher = PasswordHasher()
# a hash to verify against when the user does not exist: the same work, so the answer's time
# does not tell which names exist
_DUMMY = _hasher.hash("hakit console: no such user")


def allows(role: str, needed: str) -> bool:
    """Whether `role` may do what needs `needed`."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConsoleError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ConsoleError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ConsoleError(f"password too long: at most {MAX_PASSWORD} characters")
    return password


class Users:
    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.users.read())

    def role(self, name: str) -> str | None:
        u = self.store.users.read().get(name)
        return str(u["role"]) if u else None

    def add(self, name: str, role: str, password: str) -> None:
        check_name(name, "user")
        check_role(role)
        check_password(password)
        self.store.ensure()
        users = self.all()
        if name in users:
            raise ConsoleError(f"user {name!r} exists: `hakit console user passwd {name}`")
        now = time.time()
        users[name] = {"role": role, "hash": _hasher.hash(password), "created": now, "changed": now}
        self.store.users.write(users)

    def passwd(self, name: str, password: str, role: str | None = None) -> None:
        check_password(password)
        users = self.all()
        if name not in users:
            raise ConsoleError(f"no user {name!r}: `hakit console user list`")
        user = dict(users[name])
        user["hash"] = _hasher.hash(password)
        if role is not None:
            user["role"] = check_role(role)
        user["changed"] = time.time()
        users[name] = user
        self.store.users.write(users)

    def remove(self, name: str) -> None:
        users = self.all()
        if name not in users:
            raise ConsoleError(f"no user {name!r}: `hakit console user list`")
        del users[name]
        self.store.users.write(users)

    def verify(self, name: str, password: str) -> str | None:
        """The user's role if `password` is theirs, else None (same work either way)."""
        user = self.store.users.read().get(name)
        if len(password) > MAX_PASSWORD:
            return None
        try:
            _hasher.verify(str(user["hash"]) if user else _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return str(user["role"]) if user else None
