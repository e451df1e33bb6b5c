"""The registry of clusters the console shows and drives, and the hub that watches them.

A cluster is registered with the addresses of some (or all) of its nodes, an API token of the
node API (`hkt_…`, whose role bounds what anybody can do through the console) and its CA
fingerprint (`sha256:…`, `hakit cluster ca`), which authenticates every node it reaches. The
hub keeps one watcher per cluster: it follows the cluster's live stream through any of its
nodes (the client library tries the next address when one fails), keeps its last state
document and recent timeline entries, and hands every change to the browsers' streams.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hakit.console.store import ConsoleError, Store, check_name

log = logging.getLogger("hakit.console")

TOKEN = re.compile(r"hkt_[a-z2-7]{12}_[A-Za-z0-9_-]{20,100}")
CA = re.compile(r"sha256:[0-9a-f]{64}")
ADDRESS = re.compile(r"[A-Za-z0-9.:_\[\]-]{1,255}")
DEFAULT_PORT = 7351
EVENTS_KEPT = 300
RETRY = 2.0  # seconds between two rounds of tries when no node of a cluster answers
STALE = 8.0  # seconds without a word from the followed node before trying another one
POLL = 1.0  # seconds between two state reads when a node has no live stream (before 0.3)


class Stale(Exception):
    """The followed node went silent: follow the cluster through another node."""


class Client(Protocol):
    """What the console needs of `hakit.adapters.apiclient.ClusterClient`."""

    async def get(self, path: str, **params: Any) -> Any: ...

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        params: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
    ) -> tuple[int, Any]: ...

    async def download(
        self, path: str, params: dict[str, Any] | None = None, on_behalf_of: str | None = None
    ) -> tuple[int, bytes]: ...

    def stream(self, path: str) -> AsyncIterator[tuple[str, Any]]: ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[Sequence[str], str, str, int], Client]


def default_client(addresses: Sequence[str], token: str, ca: str, port: int) -> Client:
    """A `ClusterClient` of the node API's client library (imported when first needed)."""
    mod = importlib.import_module("hakit.adapters.apiclient")
    client: Client = mod.ClusterClient(list(addresses), token, ca, port=port)
    return client


def unreachable_types() -> tuple[type[BaseException], ...]:
    try:
        mod = importlib.import_module("hakit.adapters.apiclient")
    except ImportError:
        return (OSError,)
    return (mod.ClusterUnreachable, OSError)


def parse_nodes(text: str) -> list[str]:
    nodes = [a.strip() for a in text.split(",") if a.strip()]
    if not nodes:
        raise ConsoleError("no node address given: --nodes ADDR[,ADDR…]")
    for a in nodes:
        if not ADDRESS.fullmatch(a):
            raise ConsoleError(f"invalid node address {a!r}")
    return nodes


def check_cluster_entry(nodes: list[str], token: str, ca: str, port: int) -> None:
    if not TOKEN.fullmatch(token):
        raise ConsoleError("invalid token: expected hkt_ID_SECRET (`hakit token create`)")
    if not CA.fullmatch(ca):
        raise ConsoleError("invalid CA fingerprint: expected sha256:HEX (`hakit cluster ca`)")
    if not 0 < port < 65536:
        raise ConsoleError(f"invalid port {port}")


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.clusters.read())

    def add(
        self, name: str, nodes: list[str], token: str, ca: str, port: int = DEFAULT_PORT
    ) -> None:
        check_name(name, "cluster")
        check_cluster_entry(nodes, token, ca, port)
        self.store.ensure()
        data = self.all()
        if name in data:
            raise ConsoleError(f"cluster {name!r} is registered: remove it first")
        data[name] = {"nodes": nodes, "token": token, "ca": ca, "port": port, "added": time.time()}
        self.store.clusters.write(data)

    def remove(self, name: str) -> None:
        data = self.all()
        if name not in data:
            raise ConsoleError(f"no cluster {name!r}: `hakit console cluster list`")
        del data[name]
        self.store.clusters.write(data)


@dataclass
class Watched:
    """What the console knows of one cluster."""

    name: str
    entry: dict[str, Any]
    state: dict[str, Any] | None = None
    error: str | None = None
    since: float = field(default_factory=time.time)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    addresses: dict[str, list[str]] = field(default_factory=dict)  # node -> addresses
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": self.entry["nodes"],
            "state": self.state,
            "error": self.error,
            "since": self.since,
        }


class Hub:
    """One watcher per registered cluster; browsers subscribe to the changes."""

    def __init__(self, registry: Registry, factory: ClientFactory = default_client) -> None:
        self.registry = registry
        self.factory = factory
        self.watched: dict[str, Watched] = {}
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tg: asyncio.TaskGroup | None = None

    # -- clients ------------------------------------------------------------------------------

    def client(self, name: str, node: str | None = None) -> Client:
        """A client of cluster `name` (through any node), or of its node `node` only."""
        w = self.watched.get(name)
        if w is None:
            raise ConsoleError(f"no cluster {name!r}")
        e = w.entry
        addresses = list(e["nodes"])
        if node is not None:
            known = w.addresses.get(node)
            if not known:
                raise ConsoleError(f"cluster {name}: no address known for node {node!r}")
            addresses = known
        return self.factory(addresses, e["token"], e["ca"], int(e.get("port", DEFAULT_PORT)))

    def nodes_of(self, name: str) -> list[str]:
        """The cluster's nodes (from its configuration); ConsoleError if not known yet."""
        w = self.watched.get(name)
        if w is None or not w.addresses:
            raise ConsoleError(f"cluster {name}: its nodes are not known yet (unreachable?)")
        return list(w.addresses)

    # -- watching -----------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            while True:
                self.sync()
                await asyncio.sleep(1.0)  # picks up clusters added or removed by the CLI

    def sync(self) -> None:
        """Start a watcher for each registered cluster, stop those of removed ones."""
        if self._tg is None:
            return
        reg = self.registry.all()
        for name, w in list(self.watched.items()):
            if name not in reg or reg[name] != w.entry:
                if w.task is not None:
                    w.task.cancel()
                del self.watched[name]
                self.publish({"kind": "removed", "cluster": name})
        for name, entry in reg.items():
            if name not in self.watched:
                w = Watched(name, dict(entry))
                self.watched[name] = w
                w.task = self._tg.create_task(self._watch(w))
                self.publish({"kind": "cluster", "cluster": name, "view": w.view()})

    def _set(self, w: Watched, state: dict[str, Any] | None, error: str | None) -> None:
        changed = (state is not None and state != w.state) or error != w.error
        if state is not None:
            w.state = state
        if error != w.error:
            w.since = time.time()
        w.error = error
        if changed:
            self.publish({"kind": "cluster", "cluster": w.name, "view": w.view()})

    async def _addresses(self, w: Watched, client: Client) -> None:
        answer = await client.get("/v1/cluster")
        cfg = answer.get("config", answer) if isinstance(answer, dict) else {}
        nodes = cfg.get("nodes", {}) if isinstance(cfg, dict) else {}
        out: dict[str, list[str]] = {}
        for node, spec in nodes.items():
            addrs = list((spec or {}).get("addresses", {}).values())
            out[node] = [str(a) for a in addrs]
        w.addresses = out

    async def _watch(self, w: Watched) -> None:
        unreachable = unreachable_types()
        passthrough: tuple[type[BaseException], ...] = (Stale, *unreachable)
        first = True
        while True:
            client = self.client(w.name)
            try:
                await self._addresses(w, client)
                if first:
                    w.events.extend(await client.get("/v1/events", limit=100))
                    first = False
                try:
                    await self._follow(w, client)
                except passthrough:
                    raise
                except Exception as e:  # a node without /v1/stream (before 0.3): poll
                    log.info("console: %s: no live stream (%s); reading its state", w.name, e)
                    await self._poll(w, client)
            except Stale as e:
                log.info("console: %s: %s; trying the other nodes", w.name, e)
                continue
            except unreachable as e:
                self._set(w, None, str(e))
            except Exception as e:
                self._set(w, None, f"{type(e).__name__}: {e}")
            finally:
                await client.aclose()
            await asyncio.sleep(RETRY)

    async def _follow(self, w: Watched, client: Client) -> None:
        """Follow the node's stream; a node silent for STALE s (it sends its state at least
        every 5 s) is dropped, as a vanished node's connection would otherwise hang."""
        it = aiter(client.stream("/v1/stream"))
        while True:
            try:
                name, data = await asyncio.wait_for(anext(it), STALE)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Stale(f"no news from the node for {STALE:g} s") from None
            if name == "state" and isinstance(data, dict):
                self._set(w, data, None)
            elif name == "event" and isinstance(data, dict):
                w.events.append(data)
                self.publish({"kind": "event", "cluster": w.name, "event": data})

    async def _poll(self, w: Watched, client: Client) -> None:
        last = None
        while True:
            st = await client.get("/v1/state")
            self._set(w, st, None)
            evs = await client.get("/v1/events", limit=20)
            for ev in evs:
                if last is not None and (ev.get("at") or 0) > last:
                    w.events.append(ev)
                    self.publish({"kind": "event", "cluster": w.name, "event": ev})
            if evs:
                last = max(last or 0, *(e.get("at") or 0 for e in evs))
            await asyncio.sleep(POLL)

    # -- browsers -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "snapshot",
            "clusters": {n: w.view() for n, w in sorted(self.watched.items())},
        }

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=200)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(q)

    def publish(self, msg: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # a browser that does not read: it reconnects
                self.subscribers.discard(q)
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(None)
