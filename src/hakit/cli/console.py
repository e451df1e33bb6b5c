"""`hakit console`: the web console (serve), its users and its registry of clusters."""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hakit.cli.params import HelpGroup
from hakit.console.store import ConsoleError, Store, state_dir

STATE = click.option(
    "--state",
    "state",
    metavar="DIR",
    help="The console's state folder (default: $HAKIT_CONSOLE_STATE or /var/lib/hakit/console).",
)


def _store(state: str | None) -> Store:
    return Store(state_dir(state))


@click.group(cls=HelpGroup)
def console() -> None:
    """The web console: several clusters in one page (docs/console.md)."""


@console.command()
@click.option("--listen", default="0.0.0.0:7380", show_default=True, metavar="HOST:PORT")
@STATE
@click.option("--cert", type=click.Path(dir_okay=False, exists=True), help="Your certificate.")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="Its private key.")
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Plain HTTP, on a loopback --listen address only (e.g. behind a local proxy).",
)
@click.option(
    "--session-idle",
    type=click.FloatRange(min=10),
    default=1800,
    show_default=True,
    help="Seconds without a request after which a session ends.",
)
@click.option(
    "--session-max",
    type=click.FloatRange(min=60),
    default=43200,
    show_default=True,
    help="Seconds after the login after which a session ends.",
)
def serve(
    listen: str,
    state: str | None,
    cert: str | None,
    key: str | None,
    insecure_http: bool,
    session_idle: float,
    session_max: float,
) -> None:
    """Serve the console (HTTPS; a self-signed certificate is made at the first start)."""
    from hakit.console.server import ServeOptions
    from hakit.console.server import serve as run

    run(
        ServeOptions(
            listen=listen,
            state=state_dir(state),
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
            insecure_http=insecure_http,
            idle=session_idle,
            absolute=session_max,
        )
    )


@console.group(cls=HelpGroup)
def user() -> None:
    """The console's users (roles: monitor, control, admin)."""


def _password(stdin: bool) -> str:
    try:
        if stdin:
            return sys.stdin.readline().rstrip("\r\n")
        if not sys.stdin.isatty():
            raise ConsoleError("no terminal to ask the password: use --password-stdin")
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ConsoleError("the two passwords differ")
    except (OSError, UnicodeDecodeError) as e:
        raise ConsoleError(f"cannot read the password: {e}") from None
    return first


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["monitor", "control", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@STATE
def user_add(name: str, role: str, password_stdin: bool, state: str | None) -> None:
    """Add a user."""
    from hakit.console.users import Users

    Users(_store(state)).add(name, role, _password(password_stdin))
    click.echo(f"user {name} added with the role {role}")


@user.command("passwd")
@click.argument("name")
@click.option("--role", type=click.Choice(["monitor", "control", "admin"]), help="New role.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@STATE
def user_passwd(name: str, role: str | None, password_stdin: bool, state: str | None) -> None:
    """Change a user's password (and role); their sessions end."""
    from hakit.console.sessions import Sessions
    from hakit.console.users import Users

    store = _store(state)
    Users(store).passwd(name, _password(password_stdin), role)
    Sessions(store, time.time).drop_user(name)
    click.echo(f"password of {name} changed; their sessions are closed")


@user.command("remove")
@click.argument("name")
@STATE
def user_remove(name: str, state: str | None) -> None:
    """Remove a user (their sessions end)."""
    from hakit.console.sessions import Sessions
    from hakit.console.users import Users

    store = _store(state)
    Users(store).remove(name)
    Sessions(store, time.time).drop_user(name)
    click.echo(f"user {name} removed")


@user.command("list")
@STATE
def user_list(state: str | None) -> None:
    """List the users and their roles."""
    from hakit.console.users import Users

    users = Users(_store(state)).all()
    if not users:
        click.echo("no user: `hakit console user add NAME --role admin`")
        return
    t = Table(show_edge=False, header_style="bold")
    for col in ("user", "role", "created", "password changed"):
        t.add_column(col)
    for name, u in sorted(users.items()):
        t.add_row(name, u["role"], _when(u.get("created")), _when(u.get("changed")))
    Console().print(t)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


@console.group(cls=HelpGroup)
def cluster() -> None:
    """The clusters the console shows and drives."""


@cluster.command("add")
@click.argument("name")
@click.option("--nodes", required=True, metavar="ADDR[,ADDR…]", help="Addresses of its nodes.")
@click.option("--token", required=True, metavar="hkt_…", help="An API token of the cluster.")
@click.option("--ca", required=True, metavar="sha256:…", help="Its CA fingerprint.")
@click.option("--port", type=click.IntRange(1, 65535), default=7351, show_default=True)
@STATE
def cluster_add(name: str, nodes: str, token: str, ca: str, port: int, state: str | None) -> None:
    """Register a cluster (its token's role bounds what the console can do on it)."""
    from hakit.console.clusters import Registry, parse_nodes

    Registry(_store(state)).add(name, parse_nodes(nodes), token, ca, port)
    click.echo(f"cluster {name} registered")


@cluster.command("remove")
@click.argument("name")
@STATE
def cluster_remove(name: str, state: str | None) -> None:
    """Forget a cluster."""
    from hakit.console.clusters import Registry

    Registry(_store(state)).remove(name)
    click.echo(f"cluster {name} removed")


@cluster.command("list")
@STATE
def cluster_list(state: str | None) -> None:
    """List the registered clusters (never their tokens)."""
    from hakit.console.clusters import Registry

    reg = Registry(_store(state)).all()
    if not reg:
        click.echo("no cluster: `hakit console cluster add NAME --nodes … --token … --ca …`")
        return
    t = Table(show_edge=False, header_style="bold")
    for col in ("cluster", "nodes", "port", "token", "CA"):
        t.add_column(col)
    for name, c in sorted(reg.items()):
        token_id = c["token"].split("_")[1] if c["token"].count("_") >= 2 else "?"
        t.add_row(name, ", ".join(c["nodes"]), str(c["port"]), f"hkt_{token_id}_…", c["ca"][:23])
    Console().print(t)
