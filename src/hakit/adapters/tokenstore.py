"""The node's store of API tokens: `$HAKIT_ETC/tokens.json` (mode 0600, hashes only).

Written atomically (`statefile.write_json`); read once at start and after every change. A store
that cannot be read is an error the daemon reports (no token is then accepted: fail closed);
it never stops the daemon.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from hakit.adapters.statefile import StateFileError, read_json, write_json
from hakit.core.access import (
    MAX_TOKENS,
    NAME,
    Role,
    TokenRecord,
    digest,
    merge,
    new_token,
)
from hakit.errors import HakitError

MAX_TTL = 10 * 365 * 86400.0


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, TokenRecord] = {}
        self.problem: str | None = None  # why the file could not be read (no token accepted)
        self.last_used: dict[str, float] = {}  # on this node, since this daemon started

    def load(self) -> None:
        try:
            data = read_json(self.path)
            self.records = {} if data is None else _parse(self.path, data)
            self.problem = None
        except (StateFileError, HakitError) as e:
            self.records = {}
            self.problem = str(e)

    def digest(self) -> str:
        return digest(self.records)

    def _save(self, records: dict[str, TokenRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(
            self.path,
            {"version": 1, "tokens": [records[k].to_json() for k in sorted(records)]},
        )
        self.records = records

    def create(
        self, name: str, role: str, ttl: float | None, by: str, now: float
    ) -> tuple[str, TokenRecord]:
        """A new token (returned once: only its hash is kept) and its record."""
        if self.problem is not None:
            raise HakitError(f"the token store cannot be used: {self.problem}")
        if not NAME.fullmatch(name):
            raise HakitError(
                f"bad token name {name!r}: 1-64 letters, digits, spaces and ._@- "
                "(starting with a letter or digit)"
            )
        try:
            Role.parse(role)
        except ValueError as e:
            raise HakitError(str(e)) from None
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            raise HakitError(f"bad lifetime {ttl:g} s: more than 0, at most 10 years")
        live = [r for r in self.records.values() if r.revoked is None]
        if len(live) >= MAX_TOKENS:
            raise HakitError(f"{MAX_TOKENS} tokens already: revoke some first")
        token, tid, hashed = new_token(secrets.token_bytes(8), secrets.token_bytes(32))
        rec = TokenRecord(
            id=tid,
            name=name,
            role=role,
            hash=hashed,
            created=now,
            created_by=by,
            expires=None if ttl is None else now + ttl,
        )
        self._save({**self.records, tid: rec})
        return token, rec

    def revoke(self, tid: str, by: str, now: float) -> TokenRecord:
        rec = self.records.get(tid)
        if rec is None:
            raise HakitError(f"no API token {tid} (see `hakit token list`)")
        if rec.revoked is not None:
            return rec
        revoked = replace(rec, revoked=now, revoked_by=by)
        self._save({**self.records, tid: revoked})
        return revoked

    def merge_in(self, records: Iterable[TokenRecord]) -> bool:
        """Take a peer's records; True if the store changed (and was written)."""
        if self.problem is not None:
            return False
        merged = merge(self.records, records)
        if digest(merged) == self.digest():
            return False
        self._save(merged)
        return True


def _parse(path: Path, data: object) -> dict[str, TokenRecord]:
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise HakitError(f"{path}: not a token store (expected {{'version': 1, 'tokens': […]}})")
    out = {}
    for i, d in enumerate(data["tokens"]):
        if not isinstance(d, dict):
            raise HakitError(f"{path}: tokens[{i}]: not an object")
        try:
            rec = TokenRecord.from_json(d)
        except ValueError as e:
            raise HakitError(f"{path}: tokens[{i}]: {e}") from None
        out[rec.id] = rec
    return out


def parse_records(data: object, where: str) -> list[TokenRecord]:
    """Records sent by a peer (`GET /v1/tokens/records`); `HakitError` if malformed."""
    return list(_parse(Path(where), data).values())
