"""Login sessions and the throttling of failed logins.

A session id is 256 random bits, sent only in the `hakit_session` cookie (Secure, HttpOnly,
SameSite=Strict, Path=/); the state file keeps only its SHA-256, so a copy of the file opens
no session. Each session has a CSRF token (another 256 random bits) that every POST must carry
in `X-Hakit-CSRF` (or the `csrf` form field) and that the page gets from `/api/me`. A session
ends at logout, after `idle` seconds without a request (30 min), and `absolute` seconds after
the login whatever happens (12 h); removing a user ends their sessions at the next request.

Failed logins are counted per source address: after `Throttle.limit` failures within
`Throttle.window` seconds the address is refused until the oldest failure leaves the window
(`too many failed logins from ADDRESS: try again in N s`), before any password is checked.
Time is injected (`now`), so tests move it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hakit.console.store import Store

COOKIE = "hakit_session"
IDLE = 30 * 60.0
ABSOLUTE = 12 * 3600.0
SEEN_WRITE = 30.0  # the last request's time is written at most that often per session
MAX_SESSIONS = 1000


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    key: str  # SHA-256 of the id
    user: str
    created: float
    seen: float
    csrf: str


class Sessions:
    def __init__(
        self,
        store: Store,
        now: Callable[[], float],
        idle: float = IDLE,
        absolute: float = ABSOLUTE,
    ) -> None:
        self.store = store
        self.now = now
        self.idle = idle
        self.absolute = absolute

    def _live(self, rec: dict[str, float | str], now: float) -> bool:
        return now - float(rec["seen"]) < self.idle and now - float(rec["created"]) < self.absolute

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for `user`: (the cookie's value, the session)."""
        now = self.now()
        sid = secrets.token_urlsafe(32)
        key = _digest(sid)
        data = {k: v for k, v in self.store.sessions.read().items() if self._live(v, now)}
        if len(data) >= MAX_SESSIONS:  # the oldest go first
            for k in sorted(data, key=lambda k: float(data[k]["seen"]))[: len(data) // 10 + 1]:
                del data[k]
        rec = {"user": user, "created": now, "seen": now, "csrf": secrets.token_urlsafe(32)}
        data[key] = rec
        self.store.ensure()
        self.store.sessions.write(data)
        return sid, Session(key, user, now, now, str(rec["csrf"]))

    def get(self, sid: str | None, *, touch: bool = True) -> tuple[Session | None, str]:
        """(the live session of cookie value `sid`, "") or (None, why: "", "expired")."""
        if not sid or len(sid) > 128:
            return None, ""
        key = _digest(sid)
        data = self.store.sessions.read()
        rec = data.get(key)
        if rec is None:
            return None, ""
        now = self.now()
        if not self._live(rec, now):
            self.drop_key(key)
            return None, "expired"
        if touch and now - float(rec["seen"]) >= SEEN_WRITE:
            data = dict(data)
            data[key] = dict(rec, seen=now)
            self.store.sessions.write(data)
            rec = data[key]
        elif touch:
            rec["seen"] = max(float(rec["seen"]), now)  # in memory until the next write
        return (
            Session(key, str(rec["user"]), float(rec["created"]), float(rec["seen"]), rec["csrf"]),
            "",
        )

    def drop_key(self, key: str) -> None:
        data = dict(self.store.sessions.read())
        if data.pop(key, None) is not None:
            self.store.sessions.write(data)

    def drop_user(self, user: str) -> None:
        data = {k: v for k, v in self.store.sessions.read().items() if v.get("user") != user}
        self.store.sessions.write(data)


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


@dataclass
class Throttle:
    now: Callable[[], float]
    limit: int = 5
    window: float = 60.0
    max_addresses: int = 10_000
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, address: str) -> deque[float]:
        q = self.failures.get(address) or deque()
        cut = self.now() - self.window
        while q and q[0] <= cut:
            q.popleft()
        return q

    def wait(self, address: str) -> float:
        """Seconds `address` must wait before its next try (0: it may try now)."""
        q = self._recent(address)
        if len(q) < self.limit:
            return 0.0
        return max(0.0, q[0] + self.window - self.now())

    def failed(self, address: str) -> None:
        if len(self.failures) >= self.max_addresses:  # forget the stale ones first
            for a in [a for a in self.failures if not self._recent(a)]:
                del self.failures[a]
            if len(self.failures) >= self.max_addresses:
                self.failures.pop(next(iter(self.failures)))
        q = self._recent(address)
        q.append(self.now())
        self.failures[address] = q

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)
