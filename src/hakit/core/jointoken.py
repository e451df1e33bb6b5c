"""Join tokens: one-time, short-lived credentials that admit one new node. Pure.

`hakit cluster add-node` prints a token `hk1-ID-SECRET-CAHASH`:

- `ID` (8 hex digits) names the token on the member that made it;
- `SECRET` (32 hex digits, 128 random bits) proves that the joiner was given the token; the
  member keeps only SHA-256 of `ID-SECRET`, never the secret itself;
- `CAHASH` (64 hex digits) is the SHA-256 of the cluster CA's public key (its DER
  SubjectPublicKeyInfo, as kubeadm's `discovery-token-ca-cert-hash`): the joiner checks the
  member's TLS certificate against it *before it sends anything*, so a server that is not a
  member of that cluster never sees the token.

So each side authenticates the other: the member by its certificate (only a holder of the
cluster secret has one the CA signed), the joiner by the token. The `Book` is the member's
record of its tokens: outstanding (hashed), used, expired or revoked (kept a while so that a
refusal says which), and the wrong attempts per address, which throttle guessing. `redeem`
decides; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

PREFIX = "hk1"
DEFAULT_TTL = 15 * 60.0  # seconds a token is valid
MAX_TTL = 24 * 3600.0
MAX_OUTSTANDING = 16  # tokens outstanding at once on one member
KEEP_SPENT = 3600.0  # seconds a used/expired/revoked token is remembered (for the refusal)
FAIL_WINDOW = 60.0  # seconds over which wrong attempts of one address are counted
FAILS_PER_ADDRESS = 5  # wrong attempts of one address in FAIL_WINDOW before it is throttled
FAILS_TOTAL = 32  # wrong attempts (all addresses) after which every token is revoked

ID_HEX, SECRET_HEX, HASH_HEX = 8, 32, 64
RANDOM_BYTES = (ID_HEX + SECRET_HEX) // 2
_TOKEN = re.compile(
    rf"{PREFIX}-([0-9a-f]{{{ID_HEX}}})-([0-9a-f]{{{SECRET_HEX}}})-([0-9a-f]{{{HASH_HEX}}})\Z"
)
_CREDENTIAL = re.compile(rf"([0-9a-f]{{{ID_HEX}}})-([0-9a-f]{{{SECRET_HEX}}})\Z")


class TokenFormatError(ValueError):
    """Not a join token (the message says what one looks like)."""


@dataclass(frozen=True)
class Token:
    id: str
    secret: str
    ca_hash: str

    def __str__(self) -> str:
        return f"{PREFIX}-{self.id}-{self.secret}-{self.ca_hash}"

    @property
    def credential(self) -> str:
        """What the joiner sends the member (the CA hash stays with the joiner)."""
        return f"{self.id}-{self.secret}"


def make_token(random: bytes, ca_hash: str) -> Token:
    """A token from `RANDOM_BYTES` random bytes and the CA's hash (`tls.ca_fingerprint`)."""
    if len(random) != RANDOM_BYTES:
        raise ValueError(f"a token needs {RANDOM_BYTES} random bytes")
    if not re.fullmatch(rf"[0-9a-f]{{{HASH_HEX}}}", ca_hash):
        raise ValueError("the CA hash is 64 lowercase hex digits (SHA-256)")
    h = random.hex()
    return Token(h[:ID_HEX], h[ID_HEX:], ca_hash)


def parse_token(text: str) -> Token:
    m = _TOKEN.fullmatch(text.strip().lower())
    if m is None:
        raise TokenFormatError(
            "not a hakit join token: expected hk1-ID-SECRET-CAHASH (8, 32 and 64 hex digits), "
            "as printed by `hakit cluster add-node` on a member of the cluster"
        )
    return Token(*m.groups())


def parse_credential(text: str) -> tuple[str, str] | None:
    """(id, secret) of what a joiner sent, or None if it is not of that form."""
    m = _CREDENTIAL.fullmatch(text)
    return None if m is None else (m.group(1), m.group(2))


def digest(token_id: str, secret: str) -> str:
    """What the member stores of a token."""
    return hashlib.sha256(f"{PREFIX}|{token_id}|{secret}".encode()).hexdigest()


def _ago(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


# --- the member's book --------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    digest: str
    node: str  # the node this token admits
    issued: float
    expires: float
    spent: str = ""  # "" while outstanding; else why it cannot be used any more
    spent_at: float = 0.0


@dataclass(frozen=True)
class Granted:
    node: str
    token: str  # its id


@dataclass(frozen=True)
class Denied:
    code: str  # unknown | used | expired | revoked | throttled | malformed
    reason: str


@dataclass(frozen=True)
class Book:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    failures: tuple[tuple[str, float], ...] = ()  # (address, time) of recent wrong attempts
    wrong_total: int = 0  # wrong attempts since the last token was made

    def outstanding(self, now: float) -> list[Entry]:
        return [e for e in self.entries.values() if not e.spent and now < e.expires]

    def is_open(self, now: float) -> bool:
        """Whether a join listener is needed: some token can still be used."""
        return bool(self.outstanding(now))

    def next_expiry(self, now: float) -> float | None:
        times = [e.expires for e in self.outstanding(now)]
        return min(times) if times else None


class TooManyTokens(ValueError):
    pass


def _prune(book: Book, now: float) -> Book:
    def keep(e: Entry) -> bool:
        end = e.spent_at if e.spent else e.expires
        return now - end < KEEP_SPENT

    return replace(
        book,
        entries={i: e for i, e in book.entries.items() if keep(e)},
        failures=tuple((a, t) for a, t in book.failures if now - t < FAIL_WINDOW),
    )


def issue(book: Book, token: Token, node: str, now: float, ttl: float) -> Book:
    """The book with `token` outstanding for `node` until `now + ttl`."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"a token lives more than 0 s and at most {MAX_TTL / 3600:g} h")
    book = _prune(book, now)
    if len(book.outstanding(now)) >= MAX_OUTSTANDING:
        raise TooManyTokens(
            f"{MAX_OUTSTANDING} join tokens are outstanding on this node already: use them, or "
            "let them expire"
        )
    if token.id in book.entries:
        raise ValueError("token id already used: draw another token")
    entry = Entry(token.id, digest(token.id, token.secret), node, now, now + ttl)
    return replace(book, entries={**book.entries, token.id: entry}, wrong_total=0)


def _wrong(book: Book, address: str, now: float, denied: Denied) -> tuple[Book, Denied]:
    book = replace(
        book, failures=(*book.failures, (address, now)), wrong_total=book.wrong_total + 1
    )
    if book.wrong_total >= FAILS_TOTAL and book.outstanding(now):
        why = f"revoked after {book.wrong_total} wrong join attempts"
        book = replace(
            book,
            entries={
                i: e if e.spent or now >= e.expires else replace(e, spent=why, spent_at=now)
                for i, e in book.entries.items()
            },
            wrong_total=0,
        )
    return book, denied


def redeem(book: Book, credential: str, address: str, now: float) -> tuple[Book, Granted | Denied]:
    """A joiner at `address` presents `credential` (`ID-SECRET`): granted once, for the node
    its token was made for; otherwise denied with a reason it can act on."""
    book = _prune(book, now)
    recent = [t for a, t in book.failures if a == address]
    if len(recent) >= FAILS_PER_ADDRESS:
        wait = FAIL_WINDOW - (now - min(recent))
        return book, Denied(
            "throttled",
            f"too many wrong join tokens from {address}: try again in {_ago(wait)}",
        )
    parsed = parse_credential(credential)
    if parsed is None:
        return _wrong(book, address, now, Denied("malformed", "not a join token"))
    token_id, secret = parsed
    entry = book.entries.get(token_id)
    make_new = "make a new one with `hakit cluster add-node NODE` on a member"
    if entry is None or not hmac.compare_digest(entry.digest, digest(token_id, secret)):
        return _wrong(
            book,
            address,
            now,
            Denied(
                "unknown",
                f"token {token_id} is not valid on this node (mistyped, made on another "
                f"member, or this node's daemon restarted since): {make_new}",
            ),
        )
    if entry.spent:
        code = "used" if entry.spent.startswith("used") else "revoked"
        return _wrong(
            book,
            address,
            now,
            Denied(
                code,
                f"token {token_id} was {entry.spent} {_ago(now - entry.spent_at)} ago; a token "
                f"admits one node once: {make_new}",
            ),
        )
    if now >= entry.expires:
        return _wrong(
            book,
            address,
            now,
            Denied(
                "expired",
                f"token {token_id} expired {_ago(now - entry.expires)} ago (it was valid for "
                f"{_ago(entry.expires - entry.issued)}): {make_new}",
            ),
        )
    used = f"used by {address} to join as {entry.node}"
    revoked = f"revoked: {entry.node} joined with token {token_id}"
    entries = {
        i: (
            replace(e, spent=used, spent_at=now)
            if i == token_id
            else replace(e, spent=revoked, spent_at=now)
            if e.node == entry.node and not e.spent
            else e
        )
        for i, e in book.entries.items()
    }
    return replace(book, entries=entries), Granted(entry.node, token_id)
