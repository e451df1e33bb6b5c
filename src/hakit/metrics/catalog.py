"""Every metric a node exports, once: name, type, labels, meaning (docs/metrics.md says the same).

Labels carry names only — cluster, node, peer, network, module, checker — and fixed vocabularies
(states, reasons, modes): never a path, an address, a token or a free sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class Spec:
    name: str  # a counter's without its `_total` suffix (prometheus-client adds it)
    kind: Kind
    help: str
    labels: tuple[str, ...]

    @property
    def exported(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for it."""
        if self.kind == "counter":
            return (self.name + "_total",)
        if self.kind == "histogram":
            return tuple(self.name + s for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


N = ("cluster", "node")  # every metric: the cluster and the node that reports it
M = (*N, "module")

MIRROR_STATES = ("STOP", "WAIT", "ALONE", "PRIM", "SECOND")
FARM_STATES = ("STOP", "WAIT", "UP")
STATUSES = ("not-ready", "transient", "ready")
HEALTHS = ("idle", "unknown", "up", "down", "off")
MODES = ("sync", "semi")
REPLICATION_STATES = (
    "stopped",
    "starting",
    "alone",
    "resyncing",
    "ready",
    "listening",
    "connected",
    "synced",
)

METRICS: tuple[Spec, ...] = (
    # --- the node and its view of the cluster -------------------------------------------------
    Spec("hakit_node_info", "gauge", "Always 1: the hakit release this node runs", (*N, "version")),
    Spec("hakit_daemon_start_time_seconds", "gauge", "When this node's daemon started (Unix)", N),
    Spec(
        "hakit_peer_up",
        "gauge",
        "1 while this node considers the peer alive (heard on at least one network), else 0",
        (*N, "peer"),
    ),
    Spec(
        "hakit_peer_network_up",
        "gauge",
        "1 while this node hears the peer's heartbeats on that network, else 0",
        (*N, "peer", "network"),
    ),
    Spec(
        "hakit_peer_last_heartbeat_age_seconds",
        "gauge",
        "Seconds since this node last heard the peer on that network (absent: never heard)",
        (*N, "peer", "network"),
    ),
    Spec(
        "hakit_peer_heartbeats",
        "counter",
        "Fresh heartbeats this node accepted from the peer on that network: the loss is "
        "1 - rate(...) x the interval",
        (*N, "peer", "network"),
    ),
    Spec(
        "hakit_heartbeat_gap_seconds",
        "histogram",
        "Time between two heartbeats this node accepted from the peer on that network: the "
        "interval plus the delays (a gap near the timeout is a failover narrowly avoided)",
        (*N, "peer", "network"),
    ),
    Spec(
        "hakit_peer_clock_offset_seconds",
        "gauge",
        "The peer's clock minus this node's, as its heartbeats show (includes the transit time)",
        (*N, "peer"),
    ),
    Spec(
        "hakit_network_up",
        "gauge",
        "1 while this node's own heartbeat socket on that network is bound and sending, else 0",
        (*N, "network"),
    ),
    Spec(
        "hakit_event_loop_lag_seconds",
        "histogram",
        "How late the daemon's event loop woke a task that slept 0.1 s (what a blocking call "
        "on the loop costs every request, heartbeat snapshot and replication acknowledgement)",
        N,
    ),
    Spec("hakit_heartbeat_interval_seconds", "gauge", "Configured heartbeat interval (seconds)", N),
    Spec(
        "hakit_heartbeat_timeout_seconds",
        "gauge",
        "Configured heartbeat timeout: a peer silent this long is lost",
        N,
    ),
    Spec("hakit_heartbeats_sent", "counter", "Heartbeat datagrams sent (every peer, network)", N),
    Spec("hakit_heartbeats_received", "counter", "Heartbeat datagrams received", N),
    Spec("hakit_heartbeats_accepted", "counter", "Heartbeats received, authentic and fresh", N),
    Spec(
        "hakit_heartbeats_rejected",
        "counter",
        "Heartbeats received and refused, by reason (bad MAC, replayed, unknown node...)",
        (*N, "reason"),
    ),
    Spec(
        "hakit_heartbeat_send_errors",
        "counter",
        "Heartbeats the kernel refused to send, by network",
        (*N, "network"),
    ),
    Spec(
        "hakit_heartbeat_snapshots_skipped",
        "counter",
        "State reports of the heartbeat process the daemon did not read in time",
        N,
    ),
    Spec(
        "hakit_heartbeat_process_restarts",
        "counter",
        "Restarts of the heartbeat process by the daemon",
        N,
    ),
    # --- modules ------------------------------------------------------------------------------
    Spec(
        "hakit_module_state",
        "gauge",
        "1 for the module's current state on this node, 0 for its other states",
        (*M, "kind", "state"),
    ),
    Spec(
        "hakit_module_status",
        "gauge",
        "1 for the module's current status on this node (not-ready, transient, ready)",
        (*M, "status"),
    ),
    Spec(
        "hakit_module_state_since_timestamp_seconds",
        "gauge",
        "When the module entered its current phase on this node (Unix)",
        M,
    ),
    Spec(
        "hakit_module_config_error",
        "gauge",
        "1: the module is installed here but not loaded (its configuration is invalid)",
        M,
    ),
    Spec(
        "hakit_module_unprotected",
        "gauge",
        "1 while this node serves the mirror module without a ready secondary, else 0",
        M,
    ),
    Spec(
        "hakit_module_blocked",
        "gauge",
        "1 while the module cannot start here until an operator acts (blocked), else 0",
        M,
    ),
    Spec(
        "hakit_module_failover_enabled",
        "gauge",
        "1 if the mirror module fails over automatically (hakit failover on), else 0",
        M,
    ),
    Spec("hakit_module_vips_held", "gauge", "Virtual IPs this node holds for the module", M),
    Spec(
        "hakit_module_data_generation",
        "gauge",
        "The mirror module's data generation on this node (grows at each promotion)",
        M,
    ),
    Spec(
        "hakit_module_failovers",
        "counter",
        "Times this node took the primary role from its peer, by reason (peer-lost, swap, "
        "primforce, ...), since the daemon started",
        (*M, "reason"),
    ),
    Spec(
        "hakit_module_restarts",
        "counter",
        "Restarts of the application on this node without failover, by reason (checker, "
        "restart...), since the daemon started",
        (*M, "reason"),
    ),
    Spec(
        "hakit_farm_buckets",
        "gauge",
        "Hash buckets of the farm module's VIP this node serves (of 256)",
        M,
    ),
    Spec(
        "hakit_farm_agreed",
        "gauge",
        "1 while the farm's nodes agree on who serves which bucket, else 0",
        M,
    ),
    # --- checkers -------------------------------------------------------------------------------
    Spec(
        "hakit_checker_health",
        "gauge",
        "1 for the checker's current health (idle, unknown, up, down, off), 0 for the others",
        (*M, "checker", "type", "health"),
    ),
    Spec(
        "hakit_checker_recoveries_used",
        "gauge",
        "Recoveries (restarts, failovers) the checkers asked for within the loop-protection window",
        M,
    ),
    Spec(
        "hakit_checker_recoveries_max",
        "gauge",
        "Recoveries allowed within the window before the module is stopped",
        M,
    ),
    # --- split brain: the arbiter ---------------------------------------------------------------
    Spec(
        "hakit_witness_lease",
        "gauge",
        "1 while the arbiter allows this node to be primary (witness lease held), else 0; "
        "absent without arbitration",
        M,
    ),
    Spec(
        "hakit_witness_reachable",
        "gauge",
        "1 if the witness answered this node's last request, 0 if not; absent before the "
        "first request (only a primary, or a node about to take over, asks)",
        M,
    ),
    Spec(
        "hakit_arbiter_asking",
        "gauge",
        "1 while the module waits for the arbiter's word to take over or stay primary",
        M,
    ),
    # --- replication ----------------------------------------------------------------------------
    Spec(
        "hakit_replication_mode",
        "gauge",
        "1 for the module's replication mode (sync, semi, async)",
        (*M, "mode"),
    ),
    Spec(
        "hakit_replication_state",
        "gauge",
        "1 for the state of this node's replication process, 0 for the others",
        (*M, "state"),
    ),
    Spec(
        "hakit_replication_connected",
        "gauge",
        "1 while this node's replication process is connected to its peer's, else 0",
        M,
    ),
    Spec(
        "hakit_replication_ops",
        "counter",
        "Operations sent (role primary) or applied (role secondary) by the replication process",
        (*M, "role"),
    ),
    Spec(
        "hakit_replication_bytes",
        "counter",
        "Bytes of the replication stream sent (role primary) or received (role secondary)",
        (*M, "role"),
    ),
    Spec(
        "hakit_replication_waiting_ops",
        "gauge",
        "Operations sent to the secondary and not yet acknowledged (primary)",
        M,
    ),
    Spec(
        "hakit_replication_lag_seconds",
        "gauge",
        "How long the secondary has been silent while operations wait for it (primary; 0 "
        "when none wait)",
        M,
    ),
    Spec(
        "hakit_replication_fsync_seconds",
        "histogram",
        "Duration of the application's fsyncs through the replication layer (both copies)",
        M,
    ),
    Spec(
        "hakit_resync_done_bytes",
        "gauge",
        "Resynchronisation in progress: bytes compared so far",
        M,
    ),
    Spec(
        "hakit_resync_todo_bytes",
        "gauge",
        "Resynchronisation in progress: bytes to compare in all",
        M,
    ),
    Spec(
        "hakit_resync_sent_bytes",
        "gauge",
        "Resynchronisation in progress: file data sent so far",
        M,
    ),
    Spec(
        "hakit_resync_progress_ratio",
        "gauge",
        "Resynchronisation in progress: fraction done (0..1)",
        M,
    ),
    Spec(
        "hakit_resync_eta_seconds",
        "gauge",
        "Resynchronisation in progress: estimated seconds left",
        M,
    ),
    Spec(
        "hakit_resync_last_timestamp_seconds",
        "gauge",
        "When the last resynchronisation ended (Unix)",
        M,
    ),
    Spec(
        "hakit_resync_last_duration_seconds",
        "gauge",
        "How long the last resynchronisation took",
        M,
    ),
    Spec("hakit_resync_last_sent_bytes", "gauge", "File data the last resync sent", M),
)

BY_NAME = {s.name: s for s in METRICS}


def exported_names() -> set[str]:
    """Every sample name a node exports (what a dashboard or an alert may query)."""
    return {n for s in METRICS for n in s.exported}
