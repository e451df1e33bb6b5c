"""Click parameter types shared by the `hakit` commands."""

from __future__ import annotations

import click

from hakit.config.module import MODULE_NAME


class NameType(click.ParamType[str]):
    """A module, checker or node name: checked before it reaches a file name or a URL."""

    name = "name"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value)
        if not MODULE_NAME.match(text):  # anchored with \Z: no trailing newline
            self.fail(
                f"{text!r} is not a {self.what} name (a letter, then up to 31 letters, digits, "
                "'-' or '_')",
                param,
                ctx,
            )
        return text


MODULE = NameType("module")
CHECKER = NameType("checker")


class HelpGroup(click.Group):
    """A group whose command list shows each command's whole first paragraph, wrapped, where
    click cuts it at the terminal's width with "..."; its sub-groups are of this class too."""

    group_class = type

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
