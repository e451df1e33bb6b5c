"""The `hakit` command line: one click group, sub-commands in sibling modules."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from hakit import __version__
from hakit.cli import admin, modules
from hakit.cli import templates as template_commands
from hakit.cli.cluster import cluster
from hakit.cli.config import config
from hakit.cli.console import console
from hakit.cli.lab import lab
from hakit.cli.params import MODULE, HelpGroup
from hakit.cli.replication import verify
from hakit.cli.witness import witness
from hakit.errors import HakitError
from hakit.paths import Paths

err_console = Console(stderr=True)


@click.group(cls=HelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message="%(version)s")
def cli() -> None:
    """hakit: high availability and load balancing for Linux applications."""


@cli.command()
@click.option(
    "--node",
    envvar="HAKIT_NODE",
    help="Which cluster node this is (default: the host name, else the node whose "
    "address is configured here).",
)
def daemon(node: str | None) -> None:
    """Run the node daemon in the foreground (systemd runs it as the `hakit` service)."""
    from hakit.api.server import run_daemon

    run_daemon(Paths.from_env(), node)


@cli.command()
@click.argument("module", required=False, type=MODULE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable contract).")
@click.option("--node", metavar="NODE", help="Ask the daemon of NODE instead of this node's.")
def state(module: str | None, as_json: bool, node: str | None) -> None:
    """Show the cluster as this node (or NODE) sees it: nodes, networks, modules."""
    from hakit.cli.client import client_for
    from hakit.cli.render import render_state

    st = client_for(Paths.from_env(), node).get("/state")
    if module is not None:
        if module not in st["modules"]:
            raise HakitError(
                f"no module {module!r} on this node; installed: "
                + (", ".join(st["modules"]) or "none")
            )
        st["modules"] = {module: st["modules"][module]}
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=False))
    else:
        render_state(st, Console())


cli.add_command(cluster)
cli.add_command(config)
cli.add_command(console)
cli.add_command(lab)
cli.add_command(verify)
cli.add_command(witness)


modules.register(cli)
template_commands.register(cli, modules.module_group)
admin.register(cli)


def main(argv: list[str] | None = None) -> None:
    """The `hakit` command: every error a message and an exit status, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="hakit", standalone_mode=False)
        if isinstance(code, int) and code:  # a `click.exceptions.Exit(code)` in a command
            sys.exit(code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except HakitError as e:
        err_console.print(f"[bold red]hakit:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
