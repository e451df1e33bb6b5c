"""`hakit cluster init|add-node|join|remove-node`: a cluster of real servers, no hand-copied key.

`init` writes a one-node cluster on the first server; `add-node` on a member adds a server to
cluster.yaml on every member (`config apply`) and prints a one-time join token; `join` on the
new server fetches cluster.yaml and the secret from that member over TLS, after checking the
member's certificate against the CA fingerprint the token carries (docs/deployment.md,
docs/security.md).
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from hakit.cli.params import HelpGroup, NameType
from hakit.config.model import DEFAULT_API_PORT, DEFAULT_JOIN_PORT, DEFAULT_PORT
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

NODE = NameType("node")


@click.group("cluster", cls=HelpGroup)
def cluster() -> None:
    """Cluster set-up: create it, admit and remove servers."""


def parse_node(spec: str, *, addresses_required: bool = True) -> tuple[str, dict[str, str]]:
    """`NAME:NET=ADDR[,NET=ADDR...]` (or `NAME` alone if not `addresses_required`)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    NODE.convert(name, None, None)
    if not sep and not addresses_required:
        return name, {}
    if not sep or not rest:
        raise click.BadParameter(f"{spec!r}: expected NAME:NETWORK=ADDRESS[,NETWORK=ADDRESS...]")
    addresses: dict[str, str] = {}
    for part in rest.split(","):
        net, eq, addr = part.partition("=")
        if not eq or not net or not addr:
            raise click.BadParameter(f"{spec!r}: {part!r} is not NETWORK=ADDRESS")
        addresses[net.strip()] = addr.strip()
    return name, addresses


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise click.BadParameter(f"{text!r}: expected a duration such as 90s, 15m, 2h or 30d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_member(text: str) -> tuple[str, int]:
    """`ADDRESS`, `ADDRESS:PORT`, `[IPV6]:PORT` or a bare IPv6 address."""
    port = DEFAULT_JOIN_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise click.BadParameter(f"{text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise click.BadParameter(f"{text!r}: {port_text!r} is not a port")
        port = int(port_text)
    if not host:
        raise click.BadParameter(f"{text!r}: no address")
    return host, port


# --- init --------------------------------------------------------------------------------------


@cluster.command("init")
@click.option("--name", required=True, help="Cluster name.")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    required=True,
    metavar="NAME:NET=ADDR[,NET=ADDR]",
    help="This server and its address on each network (repeat to list other nodes too).",
)
@click.option("--interval", type=float, default=None, help="Seconds between heartbeats.")
@click.option("--timeout", type=float, default=None, help="Seconds of silence before loss.")
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, help="Heartbeat UDP port."
)
@click.option(
    "--api-port", type=int, default=DEFAULT_API_PORT, show_default=True, help="Node API TCP port."
)
@click.option(
    "--join-port", type=int, default=DEFAULT_JOIN_PORT, show_default=True, help="Join TCP port."
)
@click.option("--force", is_flag=True, help="Overwrite an existing configuration and secret.")
def cluster_init(
    name: str,
    nodes: tuple[str, ...],
    interval: float | None,
    timeout: float | None,
    port: int,
    api_port: int,
    join_port: int,
    force: bool,
) -> None:
    """Write a new cluster.yaml and a fresh secret into $HAKIT_ETC, on the first server.

    Example: hakit cluster init --name shop --node alpha:lan=192.168.1.10,repl=10.0.0.10 —
    then start the daemon and run `hakit cluster add-node` for each other server.
    """
    from hakit.adapters.statefile import write_file
    from hakit.config.load import load_cluster_text
    from hakit.config.model import DEFAULT_INTERVAL, DEFAULT_TIMEOUT
    from hakit.config.starter import new_secret, render_cluster_yaml

    paths = Paths.from_env()
    parsed = dict(parse_node(s) for s in nodes)
    cfg_path, key_path = paths.cluster_config, paths.etc / "cluster.key"
    for p in (cfg_path, key_path):
        if p.exists() and not force:
            raise HakitError(f"{p} already exists; use --force to replace it (nothing written)")
    text = render_cluster_yaml(
        name,
        parsed,
        interval=interval if interval is not None else DEFAULT_INTERVAL,
        timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        port=port,
        api_port=api_port,
        join_port=join_port,
    )
    try:  # validated before anything is written: a bad starter is not written at all
        load_cluster_text(text, cfg_path, with_secret=False)
    except ConfigError as e:
        raise ConfigError([replace(i, line=None) for i in e.issues]) from None
    paths.etc.mkdir(parents=True, exist_ok=True)
    write_file(key_path, new_secret().encode(), 0o600, what="secret", why="the cluster's key")
    write_file(cfg_path, text.encode(), 0o644, what="configuration", why="the daemon reads it")
    out.print(f"wrote {cfg_path} and {key_path} (mode 0600)")
    others = [n for n in parsed if n != next(iter(parsed))]
    out.print(
        "next: start the daemon here (`systemctl enable --now hakit`), then for each other "
        "server `hakit cluster add-node NAME:NETWORK=ADDRESS,...` here"
        + (f" (`hakit cluster add-node {others[0]}` for a node listed already)" if others else "")
        + " and `hakit cluster join` there, with the token it prints (docs/deployment.md)"
    )


# --- add-node ------------------------------------------------------------------------------


@cluster.command("add-node")
@click.argument("spec", metavar="NAME[:NET=ADDR,...]")
@click.option(
    "--ttl",
    default="15m",
    show_default=True,
    help="How long the token is valid (90s, 15m, 2h; at most 24h); it admits one node, once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the token as one JSON object.")
def add_node(spec: str, ttl: str, as_json: bool) -> None:
    """Add a server to the cluster (to cluster.yaml on every member, checked on each first) and
    print a one-time join token for it; `NAME` alone re-issues a token for a node listed
    already. Run on a member whose daemon runs."""
    from hakit.cli.apply import apply, plan, running_cluster
    from hakit.cli.client import DaemonClient
    from hakit.config.edit import add_node as edited
    from hakit.config.load import load_cluster, read_text

    seconds = parse_duration(ttl)
    name, addresses = parse_node(spec, addresses_required=False)
    paths = Paths.from_env()
    path = paths.cluster_config
    now = running_cluster(paths, load_cluster(path).secret)
    local, running = now.local, now.cluster
    known = running.config.nodes.get(name)
    if known is None:
        if not addresses:
            raise click.BadParameter(
                f"{name} is not in the cluster yet: give its addresses, "
                f"{name}:NETWORK=ADDRESS[,NETWORK=ADDRESS...] (networks: "
                f"{', '.join(running.config.networks)})"
            )
        text = edited(read_text(path), str(path), name, addresses)
        apply(plan(paths, text, everywhere=True), paths)
    elif addresses and addresses != {n: str(a) for n, a in known.addresses.items()}:
        raise HakitError(
            f"{name} is already in the cluster with other addresses "
            f"({', '.join(f'{n}={a}' for n, a in known.addresses.items())}): edit cluster.yaml "
            "and `hakit config apply --all`, or `hakit cluster remove-node` it first"
        )
    r = DaemonClient(paths).request(
        "POST", "/join-tokens", params={"node": name, "ttl": seconds}, accept=(409,)
    )
    if "token" not in r:
        raise HakitError(str(r.get("detail")))
    addresses_here = [str(a) for a in running.config.nodes[local].addresses.values()]
    command = f"hakit cluster join {addresses_here[0]} --token {r['token']}"
    if as_json:
        click.echo(json.dumps({**r, "member": local, "addresses": addresses_here, "join": command}))
        return
    minutes = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
    out.print(
        f"join token for {name} (valid {minutes}, once; CA fingerprint sha256:{r['ca_hash']}):"
    )
    out.print(r["token"])
    out.print(f"on {name}, as root:\n  {command}")
    if len(addresses_here) > 1:
        out.print(f"(any address of {local} will do: {', '.join(addresses_here)})")


# --- join --------------------------------------------------------------------------------------


@cluster.command("join")
@click.argument("member", metavar="ADDRESS[:PORT]")
@click.option(
    "--token",
    required=True,
    envvar="HAKIT_JOIN_TOKEN",
    help="The token `hakit cluster add-node` printed on the member (or $HAKIT_JOIN_TOKEN).",
)
@click.option("--force", is_flag=True, help="Replace this server's cluster.yaml and secret.")
def join(member: str, token: str, force: bool) -> None:
    """Join the cluster through MEMBER (any address of the node that made the token): check its
    certificate against the token's CA fingerprint, then receive cluster.yaml and the secret."""
    from hakit.adapters.joinclient import fetch
    from hakit.adapters.statefile import write_file
    from hakit.config.load import load_cluster, load_cluster_text
    from hakit.core.jointoken import TokenFormatError, parse_token
    from hakit.daemon.runtime import IdentityError, resolve_local_node

    try:
        parsed = parse_token(token)
    except TokenFormatError as e:
        raise click.BadParameter(str(e), param_hint="'--token'") from None
    host, port = parse_member(member)
    paths = Paths.from_env()
    cfg_path = paths.cluster_config
    if cfg_path.exists() and not force:
        raise HakitError(
            f"{cfg_path} exists: this server already has a cluster configuration; --force "
            "replaces it (and its secret)"
        )
    admitted = fetch(host, port, parsed)
    try:
        cf = load_cluster_text(admitted.cluster_yaml, cfg_path, with_secret=False)
    except ConfigError as e:
        raise HakitError(f"the member sent a configuration that does not load: {e}") from None
    if admitted.node not in cf.config.nodes:
        raise HakitError(f"the member admitted {admitted.node}, which its cluster.yaml lacks")
    secret_path = Path(cf.config.secret_file)
    if not secret_path.is_absolute():
        secret_path = cfg_path.parent / secret_path
    paths.etc.mkdir(parents=True, exist_ok=True)
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    write_file(secret_path, admitted.secret + b"\n", 0o600, what="secret", why="the cluster's key")
    write_file(
        cfg_path, admitted.cluster_yaml.encode(), 0o644, what="configuration", why="hakit reads it"
    )
    c = load_cluster(cfg_path).config  # the whole check, the secret included
    out.print(
        f"joined cluster {c.cluster} as {admitted.node}: wrote {cfg_path} and {secret_path} "
        f"(mode 0600); {len(c.nodes)} nodes: {', '.join(c.nodes)}"
    )
    try:
        me, _ = resolve_local_node(c, None, socket.gethostname())
    except IdentityError:
        me = ""
    if me != admitted.node:
        err.print(
            f"[yellow]warning: this server's host name is {socket.gethostname()!r} and none of "
            f"{admitted.node}'s addresses is configured here yet: start the daemon with "
            f"HAKIT_NODE={admitted.node} (or `hakit daemon --node {admitted.node}`)[/]"
        )
    out.print("next: `hakit config check`, then `systemctl enable --now hakit`")


# --- remove-node ---------------------------------------------------------------------------


@cluster.command("remove-node")
@click.argument("name", type=NODE)
def remove_node(name: str) -> None:
    """Remove a server from the cluster: from cluster.yaml on every other member, checked on
    each first; refused while an installed module still lists it."""
    from hakit.cli.apply import ApplyRefused, apply, plan, running_cluster
    from hakit.cli.client import DaemonClient, RemoteClient
    from hakit.config.edit import remove_node as edited
    from hakit.config.load import load_cluster, read_text

    paths = Paths.from_env()
    path = paths.cluster_config
    now = running_cluster(paths, load_cluster(path).secret)
    local, running = now.local, now.cluster
    if name not in running.config.nodes:
        raise HakitError(f"no node {name} in the cluster; nodes: {', '.join(running.config.nodes)}")
    if name == local:
        raise HakitError(
            f"{name} is this node: run `hakit cluster remove-node {name}` on another member"
        )
    text = read_text(path)
    users: dict[str, list[str]] = {}  # module -> the members it is installed on
    for n in running.config.nodes:
        if n == name:
            continue
        api = DaemonClient(paths) if n == local else RemoteClient(paths, n, running)
        try:
            r = api.request("POST", "/cluster/check", body=text.encode(), accept=(409,))
        except HakitError:
            continue  # unreachable: the checks of the apply below say so
        for module, nodes in (r.get("modules") or {}).items():
            if name in nodes:
                users.setdefault(module, []).append(n)
    if users:
        raise ApplyRefused(
            f"{name} is still a node of "
            + "; ".join(f"module {m} (installed on {', '.join(ns)})" for m, ns in users.items())
            + f": uninstall it (`hakit module uninstall MODULE --all`) or take {name} out of its "
            "nodes first; nothing was changed"
        )
    apply(plan(paths, edited(text, str(path), name), everywhere=True), paths)
    out.print(
        f"{name} removed from cluster {running.config.cluster}. On {name}: `systemctl disable "
        f"--now hakit`, then remove {path} and its secret. It still knows the cluster secret: "
        "if it leaves your control, rotate the secret (docs/security.md)"
    )
