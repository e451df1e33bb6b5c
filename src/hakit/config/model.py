"""Typed, frozen models of hakit's configuration files.

Field descriptions are the documentation: `docs/configuration.md` is generated from them
(`python -m hakit.tools.gendocs`). Structural rules (types, ranges, unknown keys) live on the
fields; rules that relate several fields are in `hakit.config.rules`, which report each problem
with the path of the field to blame.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    StringConstraints,
)

DEFAULT_PORT = 7350
DEFAULT_API_PORT = 7351
DEFAULT_JOIN_PORT = 7352
DEFAULT_INTERVAL = 0.2
DEFAULT_TIMEOUT = 1.0
MIN_PULSES_PER_TIMEOUT = 3


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return value


Regex = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_regex)]
"""A regular expression (Python syntax), compiled when the configuration is loaded."""

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""Names of clusters, nodes and networks: a letter, then letters, digits, `_` or `-` (≤ 32)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Heartbeat(Frozen):
    """How nodes tell each other they are alive."""

    port: int = Field(
        DEFAULT_PORT,
        ge=1,
        le=65535,
        description="UDP port heartbeats are sent to and received on, on every network.",
    )
    interval: float = Field(
        DEFAULT_INTERVAL,
        ge=0.02,
        le=10.0,
        description="Seconds between two heartbeats sent to each peer on each network.",
    )
    timeout: float = Field(
        DEFAULT_TIMEOUT,
        ge=0.1,
        le=300.0,
        description=(
            "Seconds of silence on every network after which a peer is declared lost. "
            f"Must be at least {MIN_PULSES_PER_TIMEOUT} × `interval`, so that losing "
            f"{MIN_PULSES_PER_TIMEOUT - 1} heartbeats in a row never loses a peer."
        ),
    )
    realtime: bool = Field(
        True,
        description=(
            "Run the heartbeat process with real-time scheduling (SCHED_RR) and locked memory "
            "when the daemon runs as root, so a loaded machine cannot delay heartbeats."
        ),
    )


class Api(Frozen):
    """The daemons' API between nodes (commands with `--node` / `--all`)."""

    port: int = Field(
        DEFAULT_API_PORT,
        ge=1,
        le=65535,
        description=(
            "TCP port of each daemon's API on its cluster addresses: HTTPS with mutual TLS "
            "(node certificates of the cluster CA). Requests are signed with the cluster secret "
            "for the target node and its daemon's boot and must be within 5 minutes of the "
            "receiver's clock."
        ),
    )
    join_port: int = Field(
        DEFAULT_JOIN_PORT,
        ge=1,
        le=65535,
        description=(
            "TCP port on which a node admits new nodes (`hakit cluster join`), open only while "
            "a join token made there by `hakit cluster add-node` is outstanding: TLS 1.3 with "
            "the node's certificate, which the new node checks against the CA fingerprint in "
            "its token before it sends the token."
        ),
    )
    metrics: Literal["open", "token"] = Field(
        "open",
        description=(
            "Who may read `GET /metrics` (Prometheus format) on `api.port`: `open` — any TLS "
            "client, as node_exporter and Patroni (the metrics carry no secret); `token` — "
            "only with an API token (any role), as `Authorization: Bearer` or Prometheus's "
            "`authorization.credentials`."
        ),
    )


class Network(Frozen):
    """A network between the nodes (a LAN, a dedicated replication link, …)."""

    description: str = Field("", description="Free text shown by `hakit state`.")
    subnet: IPvAnyNetwork | None = Field(
        None,
        description=(
            "The network's subnet, e.g. `10.0.1.0/24` (optional). When given, the nodes' "
            "addresses on this network and the VIPs placed on it (`vips[].network`) must be "
            "inside it; when not, a VIP's own prefix must contain the nodes' addresses."
        ),
    )


class Node(Frozen):
    """A server of the cluster."""

    addresses: dict[Name, IPvAnyAddress] = Field(
        description=(
            "The node's address on each network it is attached to (network name → IP address). "
            "Heartbeats to this node on that network go to this address."
        ),
    )
    max_primaries: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            "How many mirror modules this node can run as primary at once (e.g. the shared "
            "backup of an N-1 cluster). Beyond it the node still takes over — availability "
            "first — but says so: a warning in the timeline and in `hakit state`."
        ),
    )


class Etcd(Frozen):
    """An etcd cluster (v3 API, etcd 3.4 or later) that mirror modules may use as their witness
    (`split_brain.etcd` of a module; see [witness](witness.md#etcd)). TLS both ways."""

    endpoints: tuple[str, ...] = Field(
        min_length=1,
        description=(
            "Client URLs of the etcd members, `https://HOST:PORT` (all of them: each request "
            "goes to every one at once, the first successful answer wins)."
        ),
    )
    ca: str = Field(
        min_length=1,
        description=(
            "PEM file of the CA that issued the etcd members' certificates (checked, with the "
            "host name of the endpoint). A relative path is relative to the folder of "
            "`cluster.yaml`."
        ),
    )
    cert: str = Field(
        min_length=1,
        description=(
            "PEM file of this node's client certificate, issued by the CA etcd trusts "
            "(`--trusted-ca-file`, with `--client-cert-auth`). Relative: as `ca`."
        ),
    )
    key: str = Field(
        min_length=1,
        description=(
            "PEM file of the client certificate's private key (mode 0600). Relative: as `ca`."
        ),
    )
    prefix: str = Field(
        "",
        description=(
            "Keys of the leases are `PREFIX/MODULE/…` (default `/hakit/CLUSTER`): give every "
            "cluster that shares the etcd its own prefix."
        ),
    )


class Cluster(Frozen):
    """`/etc/hakit/cluster.yaml`: identical on every node of the cluster."""

    cluster: Name = Field(
        description="Name of the cluster; heartbeats of other clusters are ignored."
    )
    secret_file: str = Field(
        "cluster.key",
        min_length=1,
        description=(
            "File holding the shared secret that authenticates heartbeats (at least 16 bytes, "
            "mode 0600, identical on every node). A relative path is relative to the folder of "
            "`cluster.yaml`. `hakit cluster init` creates one."
        ),
    )
    heartbeat: Heartbeat = Field(default_factory=Heartbeat, description="Heartbeat settings.")
    api: Api = Field(default_factory=Api, description="API between nodes.")
    networks: dict[Name, Network] = Field(
        min_length=1,
        description="The networks between the nodes, by name; two or more are recommended.",
    )
    nodes: dict[Name, Node] = Field(
        min_length=1,
        description=(
            "The nodes of the cluster, by name (usually the host name). `hakit cluster init` "
            "starts with one; `hakit cluster add-node` adds the others."
        ),
    )
    etcd: Etcd | None = Field(
        None,
        description=(
            "An etcd cluster the mirror modules may use as their witness (see "
            "[witness](witness.md#etcd))."
        ),
    )

    @property
    def etcd_prefix(self) -> str:
        """Where this cluster's leases are in etcd."""
        given = self.etcd.prefix if self.etcd is not None else ""
        return (given or f"/hakit/{self.cluster}").rstrip("/")

    def peers_of(self, node: str) -> list[str]:
        return [n for n in self.nodes if n != node]

    def networks_of(self, node: str) -> list[str]:
        return [n for n in self.networks if n in self.nodes[node].addresses]
