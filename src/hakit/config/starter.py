"""Starter cluster configuration and secrets (`hakit cluster init`, the lab)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from hakit.config.model import (
    DEFAULT_API_PORT,
    DEFAULT_INTERVAL,
    DEFAULT_JOIN_PORT,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
)

SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh cluster secret: 32 random bytes, hex, one line (the content of `cluster.key`)."""
    return secrets.token_hex(SECRET_BYTES) + "\n"


def render_cluster_yaml(
    cluster: str,
    nodes: Mapping[str, Mapping[str, str]],
    *,
    secret_file: str = "cluster.key",
    interval: float = DEFAULT_INTERVAL,
    timeout: float = DEFAULT_TIMEOUT,
    port: int = DEFAULT_PORT,
    api_port: int = DEFAULT_API_PORT,
    join_port: int = DEFAULT_JOIN_PORT,
) -> str:
    """The text of a commented `cluster.yaml`; `nodes` maps node -> {network: address}."""
    networks: list[str] = []
    for addresses in nodes.values():
        for net in addresses:
            if net not in networks:
                networks.append(net)
    lines = [
        "# hakit cluster configuration: identical on every node of the cluster.",
        "# Reference: docs/configuration.md. Check it with `hakit config check`.",
        f"cluster: {cluster}",
        "# Shared secret authenticating heartbeats (path relative to this file, mode 0600).",
        f"secret_file: {secret_file}",
        "heartbeat:",
        f"  port: {port}          # UDP port of heartbeats on every network",
        f"  interval: {interval}     # seconds between two heartbeats to each peer",
        f"  timeout: {timeout}      # a peer silent on every network this long is lost",
        "api:",
        f"  port: {api_port}          # TCP: the daemons' API between nodes (mutual TLS)",
        # written only when not the default: a release before 0.2 refuses the key
        # (docs/compatibility.md), and the lab runs such releases with this starter
        (f"  join_port: {join_port}" if join_port != DEFAULT_JOIN_PORT else "  # join_port: 7352")
        + "     # TCP: admits new nodes while a join token is outstanding",
        "# Networks between the nodes; two or more are recommended, so that losing one",
        "# network is not mistaken for losing a node.",
        "networks:",
    ]
    lines += [f"  {net}: {{}}" for net in networks]
    lines.append("nodes:")
    for node, addresses in nodes.items():
        lines.append(f"  {node}:")
        lines.append("    addresses:")
        lines += [f"      {net}: {addr}" for net, addr in addresses.items()]
    return "\n".join(lines) + "\n"
