"""Daemon logging and the timeline, off the hot paths.

Log records go through an in-memory queue to a listener thread that writes the log file and
stderr (the journal under systemd): a slow disk never blocks the daemon's event loop. The
timeline — one explanatory line per decision — is kept in memory for the API and appended to
`events.jsonl` through the same queue.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hakit.paths import open_log

TIMELINE_KEPT = 2000
LOGGER = "hakit"


@dataclass(frozen=True)
class Event:
    """One entry of the timeline: when, what kind, about what, and the explanatory sentence."""

    at: float
    node: str
    kind: str
    message: str
    peer: str | None = None
    network: str | None = None
    module: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class _JsonLinesHandler(logging.Handler):
    """Writes records carrying an `attribute` (`event`: the timeline, `audit`: the audit
    trail) as one JSON object per line."""

    def __init__(self, path: Path, attribute: str = "event") -> None:
        super().__init__()
        self._file = open_log(path)
        self._attribute = attribute

    def emit(self, record: logging.LogRecord) -> None:
        ev = getattr(record, self._attribute, None)
        if ev is None:
            return
        try:
            self._file.write(json.dumps(ev, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self._file.close()
        super().close()


class Timeline:
    def __init__(self, node: str) -> None:
        self.node = node
        self._events: deque[Event] = deque(maxlen=TIMELINE_KEPT)
        self._log = logging.getLogger(LOGGER + ".timeline")
        self.seq = 0  # entries recorded since the daemon started

    def record(self, ev: Event) -> None:
        self._events.append(ev)
        self.seq += 1
        level = logging.INFO
        if ev.kind in (
            "peer-lost",
            "link-down",
            "network-silent",
            "module-warning",
            "capacity-warning",
        ):
            level = logging.WARNING
        elif ev.kind.endswith("-error"):
            level = logging.ERROR
        self._log.log(level, "%s", ev.message, extra={"event": ev.to_json()})

    def recent(self, limit: int = 100, module: str | None = None) -> list[Event]:
        events = [e for e in self._events if module is None or e.module == module]
        return events[-limit:]

    def after(self, seq: int) -> tuple[int, list[Event]]:
        """The entries recorded after the `seq`-th (those still kept) and the current `seq`."""
        new = min(max(self.seq - seq, 0), len(self._events))
        return self.seq, list(self._events)[len(self._events) - new :]


@contextmanager
def daemon_logging(log_dir: Path, node: str, *, to_stderr: bool = True) -> Iterator[None]:
    """Configure queue-backed logging for the daemon's lifetime."""
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(
        f"%(asctime)s.%(msecs)03d {node} %(levelname)s %(name)s: %(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
    handlers: list[logging.Handler] = []
    log_file = open_log(log_dir / "hakit.log")
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(fmt)
    handlers.append(file_handler)
    if to_stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(err)
    handlers.append(_JsonLinesHandler(log_dir / "events.jsonl"))
    handlers.append(_JsonLinesHandler(log_dir / "audit.jsonl", "audit"))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=False)
    root = logging.getLogger(LOGGER)
    root.setLevel(logging.INFO)
    root.propagate = False
    qh = logging.handlers.QueueHandler(q)
    root.addHandler(qh)
    listener.start()
    try:
        yield
    finally:
        root.removeHandler(qh)
        listener.stop()
        for h in handlers:
            h.close()
        log_file.close()
