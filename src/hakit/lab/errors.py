"""The lab's error: one actionable message, reported by the CLI as is."""

from __future__ import annotations

from hakit.errors import HakitError


class LabError(HakitError):
    """A lab operation failed; `str()` says what failed and what to do about it."""

    exit_code = 1
