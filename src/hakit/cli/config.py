"""`hakit config check|apply|ports`: the cluster configuration, its checks and its ports."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hakit.cli.params import HelpGroup
from hakit.config.model import Cluster
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True)


@click.group("config", cls=HelpGroup)
def config() -> None:
    """The cluster configuration: check it, apply it to every node, list its ports."""


@config.command("check")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path),
    help="Cluster configuration to check (default: $HAKIT_ETC/cluster.yaml).",
)
@click.option(
    "--modules-warn",
    is_flag=True,
    help="Report broken installed modules as warnings and exit 0 (the systemd unit does: the "
    "daemon then starts and shows them in error).",
)
def config_check(file: Path | None, modules_warn: bool) -> None:
    """Validate the configuration and the installed modules without starting anything;
    non-zero exit on any error."""
    from hakit.config.load import load_cluster

    paths = Paths.from_env()
    path = file or paths.cluster_config
    cf = load_cluster(path)
    c = cf.config
    click.echo(
        f"{path}: OK — cluster {c.cluster}, {len(c.nodes)} node{'s' if len(c.nodes) > 1 else ''} "
        f"({', '.join(c.nodes)}), "
        f"{len(c.networks)} network(s) ({', '.join(c.networks)}); heartbeat every "
        f"{c.heartbeat.interval:g} s, a peer is lost after {c.heartbeat.timeout:g} s of silence"
    )
    if len(c.nodes) < 2:
        err_console.print(
            "[yellow]note: one node so far; `hakit cluster add-node` on it admits the others[/]"
        )
    elif len(c.networks) < 2:
        err_console.print(
            "[yellow]warning: one network only; with two, losing a network is not mistaken "
            "for losing a node[/]"
        )
    if file is None:
        _check_installed(paths, c, modules_warn)


def _check_installed(paths: Paths, cluster: Cluster, warn: bool) -> None:
    """Every installed module, as the daemon will load it, and their port clashes."""
    from hakit.config.clashes import check_installed

    good, bad = check_installed(paths.modules, cluster)
    if good:
        click.echo(f"{paths.modules}: {len(good)} module(s) OK ({', '.join(m.name for m in good)})")
    for problem in bad:
        colour = "yellow" if warn else "bold red"
        label = "warning" if warn else "error"
        err_console.print(
            f"[{colour}]{label}:[/] module {problem}", highlight=False, soft_wrap=True
        )
    if bad and not warn:
        raise click.exceptions.Exit(2)


@config.command("apply")
@click.option(
    "--all", "everywhere", is_flag=True, help="On every node of the cluster (else this one)."
)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The new configuration (default: $HAKIT_ETC/cluster.yaml as edited here).",
)
def config_apply(everywhere: bool, file: Path | None) -> None:
    """Check the edited cluster.yaml on every node (as `config check` does, with each node's
    installed modules), then apply it on all of them; nothing changes anywhere if one check
    fails. Daemons take new and removed nodes live, modules keep running."""
    from hakit.cli.apply import apply, plan
    from hakit.config.load import read_text

    paths = Paths.from_env()
    path = file or paths.cluster_config
    apply(plan(paths, read_text(path), everywhere=everywhere), paths)


@config.command("ports")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--nftables",
    "nft",
    is_flag=True,
    help="Print an `nft -f` script for this node (or --node): hakit's ports open to the "
    "cluster's nodes only.",
)
@click.option(
    "--firewalld",
    "fwd",
    is_flag=True,
    help="Print `firewall-cmd` commands for this node (or --node).",
)
@click.option("--zone", help="With --firewalld: the zone (default: the default zone).")
@click.option("--node", metavar="NODE", help="Rules for NODE instead of this node.")
def config_ports(as_json: bool, nft: bool, fwd: bool, zone: str | None, node: str | None) -> None:
    """List every port the cluster uses — protocol, who listens, who must reach it, what
    authenticates it — from cluster.yaml and the installed modules; or print firewall rules."""
    import socket

    from hakit.config.clashes import check_installed
    from hakit.config.load import load_cluster
    from hakit.config.ports import cluster_ports, firewalld, nftables
    from hakit.daemon.runtime import resolve_local_node

    paths = Paths.from_env()
    cfg = load_cluster(paths.cluster_config, with_secret=False).config
    good, _ = check_installed(paths.modules, cfg)
    uses = cluster_ports(cfg, good)
    if nft or fwd:
        me = resolve_local_node(cfg, node, socket.gethostname())[0]
        click.echo(
            nftables(uses, me, cfg.cluster) if nft else firewalld(uses, me, cfg.cluster, zone),
            nl=False,
        )
        return
    if as_json:
        click.echo(
            json.dumps({"cluster": cfg.cluster, "ports": [u.to_json() for u in uses]}, indent=2)
        )
        return
    t = Table(show_edge=False, header_style="bold")
    for col in ("port", "what", "listens", "reached by", "authentication"):
        t.add_column(col)
    for u in uses:
        listen = sorted({h for h, _ in u.listen})
        sources = sorted({h for h, _ in u.sources}) or ["anyone"]
        what = u.what + (f" ({u.note})" if u.note else "")
        t.add_row(
            f"{u.protocol.upper()} {u.port}",
            what,
            ", ".join(listen),
            ", ".join(sources),
            u.auth,
        )
    out.print(t)
