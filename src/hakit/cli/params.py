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
