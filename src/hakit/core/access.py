"""Who may do what on the node API: API tokens, roles and the route table (ADR 0004). Pure.

A token is `hkt_<ID>_<SECRET>`: ID 12 lowercase base32 characters (public: lists, audit
records), SECRET 32 random bytes in URL-safe base64. A node keeps only SHA-256 of the secret.
Records are immutable but for their revocation, so two nodes' stores merge by union, the
earliest revocation winning (`merge`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from typing import Any


class Role(IntEnum):
    """Cumulative: each role may do what the roles below it may."""

    MONITOR = 1  # read-only
    CONTROL = 2  # + module commands, checker switches, verify
    ADMIN = 3  # + install/uninstall, configuration, join tokens, API tokens

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: admin, control or monitor") from None


ROLES = tuple(r.label for r in Role)
PREFIX = "hkt"
_ID = re.compile(r"[a-z2-7]{12}")
_TOKEN = re.compile(r"hkt_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")
MAX_TOKENS = 1000


def new_token(id_bytes: bytes, secret: bytes) -> tuple[str, str, str]:
    """(token, id, secret hash) from 8 random bytes of id and 32 of secret."""
    tid = base64.b32encode(id_bytes).decode().lower().rstrip("=")[:12]
    sec = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    return f"{PREFIX}_{tid}_{sec}", tid, _hash(sec)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    m = _TOKEN.fullmatch(text.strip())
    return (m.group(1), m.group(2)) if m else None


def valid_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    hash: str
    created: float
    created_by: str
    expires: float | None = None
    revoked: float | None = None
    revoked_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What lists show: everything but the hash."""
        out = self.to_json()
        del out["hash"]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TokenRecord:
        """A record from a store or a peer; `ValueError` naming the field if malformed."""

        def text(k: str, pattern: re.Pattern[str] | None = None) -> str:
            v = d.get(k)
            if not isinstance(v, str) or (pattern is not None and not pattern.fullmatch(v)):
                raise ValueError(f"token record: bad {k!r}: {v!r}")
            return v

        def when(k: str, optional: bool = True) -> float | None:
            v = d.get(k)
            if v is None and optional:
                return None
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e11:
                raise ValueError(f"token record: bad {k!r}: {v!r}")
            return float(v)

        role = text("role")
        if role not in ROLES:
            raise ValueError(f"token record: bad 'role': {role!r}")
        created = when("created", optional=False)
        assert created is not None
        revoked_by = d.get("revoked_by")
        if revoked_by is not None and not isinstance(revoked_by, str):
            raise ValueError(f"token record: bad 'revoked_by': {revoked_by!r}")
        return cls(
            id=text("id", _ID),
            name=text("name", NAME),
            role=role,
            hash=text("hash", re.compile(r"[0-9a-f]{64}")),
            created=created,
            created_by=text("created_by")[:200],
            expires=when("expires"),
            revoked=when("revoked"),
            revoked_by=None if revoked_by is None else revoked_by[:200],
        )


def merge(a: Mapping[str, TokenRecord], b: Iterable[TokenRecord]) -> dict[str, TokenRecord]:
    """Union by id; for one id the earliest revocation wins (records are otherwise equal)."""
    out = dict(a)
    for r in b:
        mine = out.get(r.id)
        if mine is None:
            out[r.id] = r
        elif r.revoked is not None and (mine.revoked is None or r.revoked < mine.revoked):
            out[r.id] = replace(mine, revoked=r.revoked, revoked_by=r.revoked_by)
    return out


def digest(records: Mapping[str, TokenRecord]) -> str:
    """Equal for equal stores, whatever the order."""
    canon = json.dumps([records[k].to_json() for k in sorted(records)], sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class Authenticated:
    record: TokenRecord

    @property
    def role(self) -> Role:
        return Role.parse(self.record.role)


def authenticate(
    records: Mapping[str, TokenRecord], header: str | None, now: float
) -> Authenticated | str:
    """The token of an `Authorization` header, or why it is refused (never echoing it)."""
    if not header:
        return "an API token is required: `Authorization: Bearer hkt_…` (hakit token create)"
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return "the Authorization header must be `Bearer hkt_…`"
    parsed = parse_token(value)
    if parsed is None:
        return "malformed API token: expected hkt_<12 characters>_<43 characters>"
    tid, secret = parsed
    rec = records.get(tid)
    if rec is None or not hmac.compare_digest(rec.hash, _hash(secret)):
        return f"unknown API token {tid} (mistyped, or made for another cluster)"
    if rec.revoked is not None:
        return f"API token {tid} ({rec.name}) was revoked"
    if rec.expires is not None and now >= rec.expires:
        return f"API token {tid} ({rec.name}) has expired"
    return Authenticated(rec)


# The module commands of `POST /v1/modules/{module}/{command}` (the CLI's, the console's).
MODULE_COMMANDS = (
    "start",
    "stop",
    "restart",
    "stopstart",
    "swap",
    "prim",
    "second",
    "primforce",
    "failover-on",
    "failover-off",
)

# --- the route table ------------------------------------------------------------------------

_M = r"(?P<module>[A-Za-z][A-Za-z0-9_-]{0,31})"
# (method, path pattern, role needed (None: open, no authentication), action for the audit)
ROUTES: tuple[tuple[str, str, Role | None, str], ...] = (
    ("GET", r"/v1/hello", None, "hello"),
    ("GET", r"/v1/ca", None, "ca"),
    ("GET", r"/v1/health", None, "health"),
    ("GET", r"/v1/openapi\.json", None, "openapi"),
    ("GET", r"/v1/tokens", Role.ADMIN, "token-list"),
    ("POST", r"/v1/tokens", Role.ADMIN, "token-create"),
    ("DELETE", r"/v1/tokens/(?P<token>[a-z2-7]{12})", Role.ADMIN, "token-revoke"),
    ("GET", r"/v1/tokens/records", Role.ADMIN, "token-sync"),
    ("POST", r"/v1/tokens/records", Role.ADMIN, "token-sync"),
    ("POST", r"/v1/modules", Role.ADMIN, "module-install"),
    ("POST", r"/v1/modules/check", Role.ADMIN, "module-check"),
    ("DELETE", rf"/v1/modules/{_M}", Role.ADMIN, "module-uninstall"),
    ("POST", rf"/v1/modules/{_M}/verify", Role.CONTROL, "verify"),
    (
        "POST",
        rf"/v1/modules/{_M}/checkers/(?P<checker>[^/]+)/(?P<switch>on|off)",
        Role.CONTROL,
        "checker",
    ),
    ("POST", rf"/v1/modules/{_M}/(?P<command>[a-z-]+)", Role.CONTROL, "command"),
    ("POST", r"/v1/cluster/check", Role.ADMIN, "cluster-check"),
    ("POST", r"/v1/cluster/apply", Role.ADMIN, "cluster-apply"),
    ("POST", r"/v1/join-tokens", Role.ADMIN, "join-token"),
    ("GET", r"/metrics", Role.MONITOR, "metrics"),
    ("GET", r"/v1(/.*)?", Role.MONITOR, "read"),
)
NODES_ONLY = frozenset({"token-sync"})  # refused to every token, whatever its role
_COMPILED = tuple((m, re.compile(p), r, a) for m, p, r, a in ROUTES)


@dataclass(frozen=True)
class Route:
    action: str
    needs: Role | None  # None: open
    fields: dict[str, str]


def route(method: str, path: str) -> Route | None:
    """The table's entry for a request, or None: refused to every token (fail closed)."""
    for m, pattern, needs, action in _COMPILED:
        if m == method and (match := pattern.fullmatch(path)):
            fields = {k: v for k, v in match.groupdict().items() if v is not None}
            return Route(action, needs, fields)
    return None


def allowed(role: Role, r: Route | None) -> str | None:
    """None if `role` may take route `r`, else why not."""
    if r is None:
        return "this request is not open to API tokens"
    if r.needs is not None and role < r.needs:
        article = "an" if r.needs is Role.ADMIN else "a"
        return (
            f"{article} {r.needs.label} token is needed for this ({r.action}); "
            f"this one is {role.label}"
        )
    return None
