"""The etcd witness: the `WitnessPort` of a mirror module's lease, kept in an etcd cluster.

For users who already run etcd (as Patroni does): the primary role of a module is a key in etcd
attached to an etcd lease of its holder, with the guarantees of the hakit witness (see
core/etcd_lease.py for the keys and rules, docs/witness.md "etcd" for the set-up).

It talks to etcd's v3 JSON gateway (`/v3/...` over HTTPS, etcd ≥ 3.4) with httpx, the HTTP client
hakit already depends on; no gRPC. TLS both ways: etcd's certificate is checked against `ca`,
the node presents `cert`/`key` (etcd runs with `--client-cert-auth --trusted-ca-file`). Every
call goes to every endpoint at once and the first successful answer wins; each answer is read up
to `MAX_RESPONSE` bytes and the whole request ends by its timeout. Every read is linearizable
(etcd's default: the answer of a member cut from its majority never comes), so a minority of
etcd members grants nothing, and writes need the majority anyway.

Timing: a granted `acquire`/`renew` holds until the moment its lease keepalive (or grant) was
*sent* plus `ttl`; etcd deletes the key `ceil(ttl + grace + 0.1)` s after that keepalive
*arrived*, so the holder's deadline and its grace have both passed before another node can be
granted. The
client's own memory of its deadlines (`LeaseMemory`) applies exactly as for the hakit witness:
a late `renew` goes as `acquire`, a stale answer is not believed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hakit.adapters.witness import LeaseMemory, Sent, WitnessReply
from hakit.core import etcd_lease as el
from hakit.wire.witness import Op

MAX_RESPONSE = 256 * 1024  # bytes read of one answer (a range is limited to RANGE_LIMIT keys)
# keys of one module read at once: holder, last, latest and contenders. Beyond it (a flood of
# contender keys) `holder` may be cut off the read; the grant's transaction still compares it,
# so a wrong read can only refuse, never grant twice.
RANGE_LIMIT = 128


class EtcdError(Exception):
    """No endpoint gave a successful answer in time (or the answers were not etcd's)."""


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach the etcd cluster: from `cluster.yaml`'s `etcd:` section."""

    endpoints: tuple[str, ...]  # https://host:port
    ca: Path
    cert: Path
    key: Path
    prefix: str  # keys are PREFIX/MODULE/…


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return b""


def _int(value: object) -> int:
    """etcd's JSON gives int64 as strings; absent (zero) fields are omitted."""
    try:
        return int(value) if isinstance(value, str | int) else 0
    except ValueError:
        return 0


def tls_context(access: EtcdAccess) -> ssl.SSLContext:
    """Verify etcd against `ca` (and its host name), present our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(access.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(access.cert), str(access.key))
    return ctx


class Gateway:
    """etcd's JSON gateway on several endpoints: each call to all at once, first success wins."""

    def __init__(self, access: EtcdAccess) -> None:
        if not access.endpoints:
            raise ValueError("an etcd witness needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in access.endpoints]
        self._ctx = tls_context(access)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Task[dict[str, Any] | str]] = set()

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(verify=self._ctx, trust_env=False)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Wait for the calls still running (each bounded by its own end), close the client."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._loop = None

    async def call(self, path: str, body: dict[str, Any], end: float) -> dict[str, Any]:
        """POST `body` to `path` on every endpoint; the first successful answer before `end`
        (monotonic), else `EtcdError`. The slower calls are not cancelled (a request cancelled
        in flight can leave its connection half-used): each ends by `end` in the background."""
        http = self._http()
        tasks = [asyncio.create_task(self._one(http, e, path, body, end)) for e in self.endpoints]
        self._running.update(tasks)
        for t in tasks:
            t.add_done_callback(self._running.discard)
        errors: list[str] = []
        try:
            for fut in asyncio.as_completed(tasks, timeout=max(0.0, end - time.monotonic())):
                answer = await fut
                if isinstance(answer, dict):
                    return answer
                errors.append(answer)
        except TimeoutError:
            pass
        raise EtcdError("; ".join(errors) or "no etcd endpoint answered in time")

    async def _one(
        self, http: httpx.AsyncClient, endpoint: str, path: str, body: dict[str, Any], end: float
    ) -> dict[str, Any] | str:
        """The answer of one endpoint, or what went wrong (never raises: it may run unwatched)."""
        try:
            return await self._post(http, endpoint, path, body, end)
        except EtcdError as e:
            return str(e)

    async def _post(
        self, http: httpx.AsyncClient, endpoint: str, path: str, body: dict[str, Any], end: float
    ) -> dict[str, Any]:
        left = end - time.monotonic()
        if left <= 0:
            raise EtcdError(f"{endpoint}: no time left")
        try:
            async with http.stream(
                "POST", endpoint + path, json=body, timeout=httpx.Timeout(left)
            ) as r:
                data = bytearray()
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE:
                        raise EtcdError(f"{endpoint}: answer larger than {MAX_RESPONSE} bytes")
                status = r.status_code
        except httpx.HTTPError as e:
            raise EtcdError(f"{endpoint}: {type(e).__name__}: {e}") from None
        except ssl.SSLError as e:
            raise EtcdError(f"{endpoint}: TLS: {e}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise EtcdError(f"{endpoint}: not a JSON answer (HTTP {status})") from None
        if not isinstance(answer, dict):
            raise EtcdError(f"{endpoint}: not a JSON object (HTTP {status})")
        if "result" in answer and isinstance(answer["result"], dict):  # a stream's message
            answer = answer["result"]
        elif "error" in answer:
            raise EtcdError(f"{endpoint}: {answer.get('error')}")
        if status != 200 or "header" not in answer:
            raise EtcdError(f"{endpoint}: unexpected answer (HTTP {status})")
        return answer


class EtcdWitness:
    """The etcd `WitnessPort` of one node: one etcd lease per module it holds or asks for."""

    def __init__(self, cluster: str, node: str, access: EtcdAccess) -> None:
        self.cluster = cluster
        self.node = node
        self.prefix = access.prefix.rstrip("/")
        self._gw = Gateway(access)
        self._memory = LeaseMemory()
        self._leases: dict[str, int] = {}  # module -> our etcd lease id
        self._first: dict[str, float] = {}  # module -> monotonic time we became a contender

    def _key(self, module: str, name: str) -> str:
        return f"{self.prefix}/{module}/{name}"

    async def aclose(self) -> None:
        await self._gw.aclose()

    async def request(
        self,
        op: str,
        module: str,
        ttl: float,
        grace: float,
        timeout: float,  # noqa: ASYNC109 - the deadline of the whole exchange
        *,
        alone: bool = False,
        force: bool = False,
    ) -> WitnessReply | None:
        """As `WitnessPort.request`; None when etcd (a majority of it) did not answer in time."""
        asked = Op(op)  # ValueError: a caller's bug
        if not (0 < ttl <= 60 and 0 <= grace <= 60):
            return WitnessReply(
                False, "", 0.0, f"ttl {ttl:g} s or grace {grace:g} s out of range", 0.0
            )
        end = time.monotonic() + timeout
        try:
            if asked is Op.RELEASE:
                return await self._release(module, end)
            if asked is Op.QUERY:
                return await self._query(module, ttl, end)
            return await self._acquire(asked, module, ttl, grace, end, alone, force)
        except EtcdError:
            return None

    # --- the operations ---------------------------------------------------------------------

    async def _acquire(
        self, asked: Op, module: str, ttl: float, grace: float, end: float, alone: bool, force: bool
    ) -> WitnessReply | None:
        record = self._memory.send(asked, module, time.monotonic())  # before the keepalive
        lease, granted_ttl = await self._lease(module, el.etcd_ttl(ttl, grace), end)
        state = await self._read(module, end)
        mine = any(n == self.node for n, _ in state.contenders)
        if not mine:
            self._first.pop(module, None)
        elif module not in self._first:  # a contender before this client started: from now
            self._first[module] = time.monotonic()
        first = self._first.get(module)
        d = el.decide(
            state,
            self.node,
            module,
            lease,
            asked_for=None if first is None else time.monotonic() - first,
            grace=grace,
            alone=alone,
            force=force,
        )
        if isinstance(d, el.Refuse):
            if d.register:
                await self._register(module, lease, end)
                self._first[module] = time.monotonic()  # after etcd recorded it
            return self._answer(record, module, ttl, False, d.holder, 0.0, d.reason)
        holder = await self._grant(module, lease, state, d, end)
        ours = holder is not None and holder.node == self.node and holder.lease == lease
        if ours:
            self._first.pop(module, None)
            remaining = el.believed(ttl, grace, granted_ttl)
            return self._answer(record, module, ttl, True, self.node, remaining, d.reason)
        who = holder.node if holder is not None else ""
        return self._answer(record, module, ttl, False, who, 0.0, "another node was faster")

    async def _release(self, module: str, end: float) -> WitnessReply:
        record = self._memory.send(Op.RELEASE, module, time.monotonic())
        del record  # a release's answer is always believed
        holder_key = self._key(module, "holder")
        txn = {
            "compare": [{"key": _b64(holder_key), "target": "VALUE", "value": _b64(self.node)}],
            "success": [
                {"request_delete_range": {"key": _b64(holder_key)}},
                {
                    "request_put": {
                        "key": _b64(self._key(module, "last")),
                        "value": _b64(el.encode_last(self.node, True)),
                    }
                },
            ],
            "failure": [{"request_range": {"key": _b64(holder_key)}}],
        }
        answer = await self._gw.call("/v3/kv/txn", txn, end)
        self._first.pop(module, None)
        lease = self._leases.pop(module, None)
        if lease is not None:  # also forgets our contender key; a lost revoke expires anyway
            with contextlib.suppress(EtcdError):
                await self._gw.call("/v3/lease/revoke", {"ID": str(lease)}, end)
        if answer.get("succeeded"):
            return WitnessReply(True, "", 0.0, "released", 0.0)
        kvs = _kvs(answer)
        if kvs:
            other = _unb64(kvs[0].get("value")).decode(errors="replace")
            return WitnessReply(False, other, 0.0, f"not released: held by {other}", 0.0)
        return WitnessReply(True, "", 0.0, "released (nobody held it)", 0.0)

    async def _query(self, module: str, ttl: float, end: float) -> WitnessReply | None:
        record = self._memory.send(Op.QUERY, module, time.monotonic())
        state = await self._read(module, end)
        h = state.holder
        if h is None:
            never = state.last is None
            return self._answer(
                record, module, ttl, False, "", 0.0, "free: never held" if never else "free"
            )
        ours = h.node == self.node and h.lease == self._leases.get(module)
        return self._answer(
            record, module, ttl, ours, h.node, ttl if ours else 0.0, f"held by {h.node}"
        )

    def _answer(
        self,
        record: Sent,
        module: str,
        ttl: float,
        granted: bool,
        holder: str,
        remaining: float,
        reason: str,
    ) -> WitnessReply | None:
        if not self._memory.trusts(record, module, time.monotonic()):
            return None
        deadline = self._memory.answer(record, module, granted, remaining, ttl)
        return WitnessReply(granted, holder, remaining, reason, deadline)

    # --- etcd calls ----------------------------------------------------------------------------

    async def _lease(self, module: str, ttl: int, end: float) -> tuple[int, int]:
        """Our etcd lease for `module`, refreshed now: (id, its TTL in etcd)."""
        lease = self._leases.get(module)
        if lease is not None:
            ka = await self._gw.call("/v3/lease/keepalive", {"ID": str(lease)}, end)
            left = _int(ka.get("TTL"))
            if left > 0:
                return lease, left
        lease = secrets.randbits(62) + 1
        self._leases[module] = lease  # even if the answer is lost: the next keepalive tells
        granted = await self._gw.call("/v3/lease/grant", {"TTL": str(ttl), "ID": str(lease)}, end)
        return lease, _int(granted.get("TTL"))

    async def _read(self, module: str, end: float) -> el.State:
        base = f"{self.prefix}/{module}/"
        top = base[:-1] + chr(ord(base[-1]) + 1)  # the end of the prefix range
        answer = await self._gw.call(
            "/v3/kv/range",
            {"key": _b64(base), "range_end": _b64(top), "limit": str(RANGE_LIMIT)},
            end,
        )
        return _state(answer, base)

    async def _register(self, module: str, lease: int, end: float) -> None:
        key = self._key(module, f"contenders/{self.node}")
        txn = {
            "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [
                {"request_put": {"key": _b64(key), "value": _b64(self.node), "lease": str(lease)}}
            ],
        }
        await self._gw.call("/v3/kv/txn", txn, end)

    async def _grant(
        self, module: str, lease: int, state: el.State, d: el.Grant, end: float
    ) -> el.Holder | None:
        """Write the grant if the state is still what was read; who holds it afterwards."""
        holder_key = _b64(self._key(module, "holder"))
        h = state.holder
        compare: list[dict[str, str]] = [
            {"key": holder_key, "target": "MOD", "mod_revision": str(h.revision if h else 0)},
            {
                "key": _b64(self._key(module, "latest")),
                "target": "MOD",
                "mod_revision": str(state.latest_revision),
            },
            {
                "key": _b64(self._key(module, "last")),
                "target": "MOD",
                "mod_revision": str(state.last_revision),
            },
        ]
        success: list[dict[str, Any]] = []
        if h is None or h.lease != lease:
            success.append(
                {"request_put": {"key": holder_key, "value": _b64(self.node), "lease": str(lease)}}
            )
        if h is None:
            success += [
                {
                    "request_put": {
                        "key": _b64(self._key(module, "last")),
                        "value": _b64(el.encode_last(self.node, False)),
                    }
                },
                {
                    "request_delete_range": {
                        "key": _b64(self._key(module, f"contenders/{self.node}"))
                    }
                },
            ]
        if d.latest != state.latest:
            latest_key = _b64(self._key(module, "latest"))
            success.append(
                {"request_put": {"key": latest_key, "value": _b64(d.latest)}}
                if d.latest is not None
                else {"request_delete_range": {"key": latest_key}}
            )
        read = {"request_range": {"key": holder_key}}
        if success:
            txn = {"compare": compare, "success": [*success, read], "failure": [read]}
            answer = await self._gw.call("/v3/kv/txn", txn, end)
        else:  # nothing to write: the holder as read (the keepalive kept it)
            return h
        kvs = _kvs(answer)
        return _holder(kvs[0]) if kvs else None


def _kvs(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The key-values of a range answer, or of the last response of a transaction."""
    if "responses" in answer:
        responses = answer.get("responses")
        if not isinstance(responses, list) or not responses:
            return []
        last = responses[-1]
        answer = last.get("response_range", {}) if isinstance(last, dict) else {}
    kvs = answer.get("kvs", [])
    return [kv for kv in kvs if isinstance(kv, dict)] if isinstance(kvs, list) else []


def _holder(kv: dict[str, Any]) -> el.Holder:
    return el.Holder(
        _unb64(kv.get("value")).decode(errors="replace"),
        _int(kv.get("lease")),
        _int(kv.get("mod_revision")),
    )


def _state(answer: dict[str, Any], base: str) -> el.State:
    holder: el.Holder | None = None
    last: tuple[str, bool] | None = None
    last_rev = latest_rev = 0
    latest: str | None = None
    contenders: list[tuple[str, int]] = []
    for kv in _kvs(answer):
        name = _unb64(kv.get("key")).decode(errors="replace").removeprefix(base)
        value = _unb64(kv.get("value"))
        if name == "holder":
            holder = _holder(kv)
        elif name == "last":
            last, last_rev = el.decode_last(value), _int(kv.get("mod_revision"))
        elif name == "latest":
            latest, latest_rev = value.decode(errors="replace"), _int(kv.get("mod_revision"))
        elif name.startswith("contenders/"):
            contenders.append((name.removeprefix("contenders/"), _int(kv.get("create_revision"))))
    return el.State(holder, last, last_rev, latest, latest_rev, tuple(contenders))
