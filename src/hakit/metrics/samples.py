"""The status document of a node, as metric samples: pure functions, no I/O, no clock.

Each section of the document (`nodes`, `heartbeat`, `daemon`, each module, its checkers, its
arbiter, its replication) has one function; a field missing or of an unexpected type gives no
sample (an older or partial document) rather than an error. Only the modules this node runs are
reported (`here` is not False): every node reports its own, so a Prometheus that scrapes every
node sees each module once per node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hakit.latency import parsed
from hakit.metrics.catalog import (
    FARM_STATES,
    HEALTHS,
    MIRROR_STATES,
    MODES,
    REPLICATION_STATES,
    STATUSES,
)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float


@dataclass(frozen=True)
class Histogram:
    name: str
    labels: Labels
    buckets: tuple[tuple[str, float], ...]  # (le, cumulative count), the last "+Inf"
    sum: float


Out = Iterator[Sample | Histogram]


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    return None


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _s(name: str, labels: Labels, v: Any) -> Iterator[Sample]:
    n = _num(v)
    if n is not None:
        yield Sample(name, labels, n)


def _one_of(name: str, labels: Labels, key: str, value: Any, choices: tuple[str, ...]) -> Out:
    """A state set: 1 for `value`, 0 for every other choice (an unknown value is added)."""
    for c in (*choices, *(() if value in choices or value is None else (str(value),))):
        yield Sample(name, (*labels, (key, c)), 1.0 if c == value else 0.0)


def samples(status: Mapping[str, Any]) -> Out:
    """Every sample of a status document (`GET /v1/state`)."""
    base: Labels = (("cluster", str(status.get("cluster", ""))), ("node", str(status["node"])))
    yield from node_samples(status, base)
    yield from heartbeat_samples(status, base)
    for name, mod in sorted((status.get("modules") or {}).items()):
        if isinstance(mod, Mapping) and mod.get("here") is not False:
            yield from module_samples(status["node"], mod, (*base, ("module", str(name))))


def node_samples(st: Mapping[str, Any], base: Labels) -> Out:
    daemon = st.get("daemon") or {}
    if "version" in daemon:
        yield Sample("hakit_node_info", (*base, ("version", str(daemon["version"]))), 1.0)
    yield from _s("hakit_daemon_start_time_seconds", base, daemon.get("started_at"))
    if (h := histogram("hakit_event_loop_lag_seconds", daemon.get("loop_lag"), base)) is not None:
        yield h
    local = st["node"]
    at = _num(st.get("at"))
    for peer, p in sorted((st.get("nodes") or {}).items()):
        if not isinstance(p, Mapping):
            continue
        if peer == local:
            for net, up in sorted((p.get("networks") or {}).items()):
                yield from _s("hakit_network_up", (*base, ("network", net)), bool(up))
            continue
        pl = (*base, ("peer", str(peer)))
        yield from _s("hakit_peer_up", pl, bool(p.get("alive")))
        yield from _s("hakit_peer_clock_offset_seconds", pl, p.get("clock_offset"))
        heard = p.get("last_heard_by_network") or {}
        counts = p.get("heartbeats_by_network") or {}
        gaps = p.get("heartbeat_gaps_by_network") or {}
        for net, up in sorted((p.get("networks") or {}).items()):
            nl = (*pl, ("network", str(net)))
            yield from _s("hakit_peer_network_up", nl, bool(up))
            yield from _s("hakit_peer_heartbeats", nl, counts.get(net))
            if (h := histogram("hakit_heartbeat_gap_seconds", gaps.get(net), nl)) is not None:
                yield h
            last = _num(heard.get(net))
            if last is not None and at is not None:
                yield Sample("hakit_peer_last_heartbeat_age_seconds", nl, max(0.0, at - last))


def heartbeat_samples(st: Mapping[str, Any], base: Labels) -> Out:
    hb = st.get("heartbeat") or {}
    yield from _s("hakit_heartbeat_interval_seconds", base, hb.get("interval"))
    yield from _s("hakit_heartbeat_timeout_seconds", base, hb.get("timeout"))
    for key, name in (
        ("sent", "hakit_heartbeats_sent"),
        ("received", "hakit_heartbeats_received"),
        ("accepted", "hakit_heartbeats_accepted"),
        ("skipped_snapshots", "hakit_heartbeat_snapshots_skipped"),
    ):
        yield from _s(name, base, hb.get(key))
    for reason, n in sorted((hb.get("rejected") or {}).items()):
        yield from _s("hakit_heartbeats_rejected", (*base, ("reason", str(reason))), n)
    errors: dict[str, float] = {}
    for key, n in (hb.get("send_errors") or {}).items():  # "NETWORK: strerror" -> n
        net = str(key).split(":", 1)[0]
        errors[net] = errors.get(net, 0.0) + (_num(n) or 0.0)
    for net, n in sorted(errors.items()):
        yield Sample("hakit_heartbeat_send_errors", (*base, ("network", net)), n)
    restarts = _get(st, "daemon", "heartbeat_restarts")
    yield from _s("hakit_heartbeat_process_restarts", base, restarts)


def module_samples(local: str, mod: Mapping[str, Any], labels: Labels) -> Out:
    if mod.get("error"):
        yield Sample("hakit_module_config_error", labels, 1.0)
        return
    yield Sample("hakit_module_config_error", labels, 0.0)
    kind = str(mod.get("kind", "mirror"))
    me = _get(mod, "nodes", local)
    if isinstance(me, Mapping):
        states = FARM_STATES if kind == "farm" else MIRROR_STATES
        yield from _one_of(
            "hakit_module_state", (*labels, ("kind", kind)), "state", me.get("state"), states
        )
        yield from _one_of("hakit_module_status", labels, "status", me.get("status"), STATUSES)
        yield from _s("hakit_module_state_since_timestamp_seconds", labels, me.get("since"))
        yield from _s("hakit_module_blocked", labels, bool(me.get("blocked")))
        yield from _s("hakit_module_data_generation", labels, _get(me, "data", "gen"))
        if kind == "farm":
            yield from _s("hakit_farm_buckets", labels, me.get("buckets"))
    if kind == "farm":
        yield from _s("hakit_farm_agreed", labels, mod.get("agreed"))
    else:
        yield from _s("hakit_module_unprotected", labels, bool(mod.get("unprotected")))
        yield from _s("hakit_module_failover_enabled", labels, mod.get("failover"))
    if isinstance(mod.get("vips_held"), list):
        yield Sample("hakit_module_vips_held", labels, float(len(mod["vips_held"])))
    for what in ("failovers", "restarts"):
        for reason, n in sorted((_get(mod, "counters", what) or {}).items()):
            yield from _s(f"hakit_module_{what}", (*labels, ("reason", str(reason))), n)
    yield from checker_samples(mod, labels)
    yield from arbiter_samples(mod.get("split_brain"), labels)
    yield from replication_samples(mod.get("replication"), labels)


def checker_samples(mod: Mapping[str, Any], labels: Labels) -> Out:
    for name, c in sorted((mod.get("checkers") or {}).items()):
        if not isinstance(c, Mapping):
            continue
        cl = (*labels, ("checker", str(name)), ("type", str(c.get("type", ""))))
        yield from _one_of("hakit_checker_health", cl, "health", c.get("health"), HEALTHS)
    rec = mod.get("recovery") or {}
    yield from _s("hakit_checker_recoveries_used", labels, rec.get("used"))
    yield from _s("hakit_checker_recoveries_max", labels, rec.get("max"))


def arbiter_samples(sb: Any, labels: Labels) -> Out:
    if not isinstance(sb, Mapping):
        return
    yield from _s("hakit_witness_lease", labels, sb.get("granted"))  # None: no arbitration
    yield from _s("hakit_witness_reachable", labels, sb.get("witness_reachable"))
    if sb.get("granted") is not None:
        yield from _s("hakit_arbiter_asking", labels, bool(sb.get("asking")))


CONNECTED = {"resyncing", "ready", "connected", "synced"}


def replication_samples(rep: Any, labels: Labels) -> Out:
    if not isinstance(rep, Mapping):
        return
    yield from _one_of("hakit_replication_mode", labels, "mode", rep.get("mode"), MODES)
    state = rep.get("state")
    yield from _one_of("hakit_replication_state", labels, "state", state, REPLICATION_STATES)
    yield Sample("hakit_replication_connected", labels, 1.0 if state in CONNECTED else 0.0)
    stats, role = rep.get("stats"), rep.get("role")
    if isinstance(stats, Mapping) and role:
        rl = (*labels, ("role", str(role)))
        yield from _s("hakit_replication_ops", rl, stats.get("ops"))
        yield from _s("hakit_replication_bytes", rl, stats.get("bytes"))
        if role == "primary":
            yield from _s("hakit_replication_waiting_ops", labels, stats.get("waiting"))
            yield from _s("hakit_replication_lag_seconds", labels, stats.get("lag"))
        h = histogram("hakit_replication_fsync_seconds", stats.get("fsync"), labels)
        if h is not None:
            yield h
    p = rep.get("progress")
    if isinstance(p, Mapping):
        yield from _s("hakit_resync_done_bytes", labels, p.get("bytes_done"))
        yield from _s("hakit_resync_todo_bytes", labels, p.get("bytes_total"))
        yield from _s("hakit_resync_sent_bytes", labels, p.get("bytes_sent"))
        pct = _num(p.get("percent"))
        if pct is not None:
            yield Sample("hakit_resync_progress_ratio", labels, pct / 100.0)
        yield from _s("hakit_resync_eta_seconds", labels, p.get("eta"))
    last = rep.get("last_sync")
    if isinstance(last, Mapping):
        yield from _s("hakit_resync_last_timestamp_seconds", labels, last.get("at"))
        yield from _s("hakit_resync_last_duration_seconds", labels, last.get("elapsed"))
        yield from _s("hakit_resync_last_sent_bytes", labels, last.get("bytes_sent"))


def histogram(name: str, h: Any, labels: Labels) -> Histogram | None:
    """A `hakit.latency` snapshot as a histogram (None: absent or malformed)."""
    p = parsed(h)
    if p is None:
        return None
    bounds, counts = p
    buckets, total = [], 0.0
    for le, n in zip([*(_le(b) for b in bounds), "+Inf"], counts, strict=True):
        total += n
        buckets.append((le, total))
    return Histogram(name, labels, tuple(buckets), _num(h.get("sum")) or 0.0)


def _le(bound: Any) -> str:
    return repr(float(bound))
