"""Run a blocking call on a worker thread for at most `timeout` seconds.

For adapters whose calls may hang where nothing else bounds them (netlink, cloud APIs): the
caller gets the result, the call's own exception, or `on_timeout(what, timeout)` once the time
is up; a worker still stuck is abandoned (a daemon thread), never joined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_bounded(
    fn: Callable[[], T],
    timeout: float,
    on_timeout: Callable[[], BaseException],
    name: str = "hakit-bounded",
) -> T:
    box: list[tuple[bool, Any]] = []

    def work() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the caller below
            box.append((False, e))

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        raise on_timeout()
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
