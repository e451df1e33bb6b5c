"""Actions and errors every module state machine shares (mirror, farm)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Explain:
    """One line for the timeline: what was detected or decided, and why."""

    message: str
    level: str = "info"  # info | warning | error


@dataclass(frozen=True)
class Accepted:
    """An operator command was accepted (the answer to the command)."""

    message: str


@dataclass(frozen=True)
class Refused:
    """An operator command was refused: why, and what to do instead."""

    message: str


class UnexpectedEvent(Exception):
    """A (phase, event) pair the table does not allow: a bug, never ignored."""
