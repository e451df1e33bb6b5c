"""`hakit --help` and every group's help show each command's whole first sentence (click cut
them at the terminal's width with "...", finding 5 of issue 13)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from hakit.cli.main import cli


def groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += groups(cmd, (*path, name))
    return out


def test_every_group_lists_its_commands_without_cutting_them() -> None:
    for path in groups(cli):
        r = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
        assert r.exit_code == 0, r.output
        commands = r.output.partition("Commands:")[2]
        assert "..." not in commands, (path, r.output)
        group = cli
        for name in path:
            group = group.commands[name]  # type: ignore[assignment]
        text = "".join(r.output.split())  # wrapping may cut at any space or hyphen
        for name, cmd in group.commands.items():
            first = "".join(cmd.get_short_help_str(limit=10_000).split())
            assert first, (path, name)
            assert name + first in text, (path, name, first)
