"""Wait for a condition with a deadline: how hakit's tools and tests wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hakit.errors import HakitError

T = TypeVar("T")


class WaitTimeout(HakitError):
    """The condition did not become true in time; the message names what was awaited."""


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `cond` until it returns a true value (returned) or `timeout` s pass (`WaitTimeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
