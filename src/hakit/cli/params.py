"""Click parameter types shared by the `hakit` commands."""

from __future__ import annotations

import re

import click

from hakit.config.model import NAME_PATTERN


class NameType(click.ParamType[str]):
    """A module, checker or node name: checked before it reaches a file name or a URL."""

    name = "name"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value)
        if not re.match(NAME_PATTERN, text) or text.endswith("\n"):
            self.fail(
                f"{text!r} is not a {self.what} name (a letter, then up to 31 letters, digits, "
                "'-' or '_')",
                param,
                ctx,
            )
        return text


MODULE = NameType("module")
CHECKER = NameType("checker")
