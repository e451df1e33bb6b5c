"""hakit's error taxonomy: what failed decides how far recovery reaches and the exit code."""

from __future__ import annotations

from dataclasses import dataclass


class HakitError(Exception):
    """Base of every error hakit reports to a user; `str()` is the whole actionable message."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, precise enough to fix without reading code."""

    file: str
    line: int | None
    field: str
    value: str | None
    expected: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        what = self.field
        if self.value is not None:
            what = f"{what} = {self.value}" if what else self.value
        return f"{where}: {what}: {self.expected}" if what else f"{where}: {self.expected}"


class ConfigError(HakitError):
    """A configuration file is missing, unreadable or invalid; nothing is started."""

    exit_code = 2

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class DaemonUnavailable(HakitError):
    """The local daemon does not answer on its socket."""

    exit_code = 3
