"""`hakit module new` and `hakit module templates`: module folders from the shipped templates,
and `hakit service`: the `services:` of a module, for the daemon and for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from hakit import templates
from hakit.adapters.services import ServiceError, start_all, stop_all, this_machine
from hakit.cli.params import HelpGroup
from hakit.config.load import load_cluster
from hakit.config.model import Cluster
from hakit.errors import HakitError
from hakit.paths import Paths

out = Console(highlight=False, soft_wrap=True)


def _local_cluster() -> Cluster | None:
    """This node's cluster configuration, or None where there is none (an admin's laptop)."""
    paths = Paths.from_env()
    if not paths.cluster_config.exists():
        return None
    return load_cluster(paths.cluster_config, with_secret=False).config


@click.command("new")
@click.argument("name")
@click.option(
    "-t",
    "--template",
    "template",
    required=True,
    metavar="T",
    help="Template to start from (`hakit module templates` lists them).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A variable of the template (repeatable); the others keep their defaults.",
)
@click.option(
    "-C",
    "--dir",
    "where",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder in which NAME/ is written.",
)
def module_new(name: str, template: str, sets: tuple[str, ...], where: Path) -> None:
    """Write a module folder NAME/ from a template.

    The module is checked against this node's cluster.

    Then: read NAME/module.yaml, `hakit module install NAME --all`, and start it.
    """
    cluster = _local_cluster()
    folder = templates.render(template, name, where, templates.parse_sets(sets), cluster)
    checked = (
        "checked against this node's cluster.yaml"
        if cluster
        else "checked alone: no cluster.yaml here, run `hakit module check` on a node"
    )
    out.print(f"wrote {folder}/ from template {template} ({checked})")
    doc = templates.load(template).spec.doc
    if doc:
        out.print(f"its settings and limits: {doc} (installed: /usr/share/doc/hakit/{doc})")


@click.command("templates")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def module_templates(as_json: bool) -> None:
    """List the module templates and their variables."""
    shipped = [templates.load(n) for n in templates.names()]
    if as_json:
        doc = {
            t.name: {
                "description": t.spec.description,
                "kind": t.spec.kind,
                "packages": list(t.spec.packages),
                "variables": {k: v.model_dump() for k, v in t.spec.variables.items()},
            }
            for t in shipped
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for t in shipped:
        out.print(f"[bold]{t.name}[/bold] ({t.spec.kind}): {t.spec.description}")
        for key, var in t.spec.variables.items():
            out.print(f"    {key} = {var.default!r}  {var.description}")


@click.group("service", cls=HelpGroup)
def service_group() -> None:
    """Start, stop or look at operating system services (a module's `services:`)."""


def _names(names: tuple[str, ...]) -> list[str]:
    if not names:
        raise HakitError("name at least one service")
    return list(names)


@service_group.command("start")
@click.argument("names", nargs=-1)
def service_start(names: tuple[str, ...]) -> None:
    """Start services, in this order.

    Those already active are left alone."""
    for line in start_all(this_machine(), _names(names)):
        out.print(line)


@service_group.command("stop")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Kill them (systemd: SIGKILL to the whole unit).")
def service_stop(names: tuple[str, ...], force: bool) -> None:
    """Stop services, in the reverse order."""
    for line in stop_all(this_machine(), _names(names), force):
        out.print(line)


@service_group.command("status")
@click.argument("names", nargs=-1)
def service_status(names: tuple[str, ...]) -> None:
    """Whether services are active (exit 1 if not)."""
    port = this_machine()
    down = []
    for name in _names(names):
        active = port.active(name)
        out.print(f"{name}: {'active' if active else 'inactive'} ({port.manager})")
        if not active:
            down.append(name)
    if down:
        raise ServiceError(f"not active: {', '.join(down)}")


@service_group.command("disable")
@click.argument("names", nargs=-1)
def service_disable(names: tuple[str, ...]) -> None:
    """Switch off their own start at boot.

    hakit starts them where they belong."""
    port = this_machine()
    for name in _names(names):
        out.print(port.disable(name))


def register(cli: click.Group, module_group: click.Group) -> None:
    module_group.add_command(module_new)
    module_group.add_command(module_templates)
    cli.add_command(service_group)
