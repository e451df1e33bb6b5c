"""Reading back a JSON-lines log (the timeline's `events.jsonl`, the audit trail): the newest
records that match, bounded in what is read."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCAN_LIMIT = 16 << 20  # bytes of the file read back at most (the newest)


def _lines_from_end(path: Path) -> Iterator[bytes]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - SCAN_LIMIT)
        f.seek(start)
        data = f.read()
    lines = data.split(b"\n")
    if start:
        lines = lines[1:]  # a partial first line
    for raw in reversed(lines):
        if raw.strip():
            yield raw


def read_back(
    path: Path, keep: Callable[[dict[str, Any]], bool], limit: int, since: float | None = None
) -> list[dict[str, Any]]:
    """At most `limit` records (the newest) with `at` ≥ `since` for which `keep` is true,
    oldest first; unreadable lines are skipped."""
    out: list[dict[str, Any]] = []
    for line in _lines_from_end(path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("at"), int | float):
            continue
        if since is not None and rec["at"] < since:
            break
        if keep(rec):
            out.append(rec)
            if len(out) >= limit:
                break
    out.reverse()
    return out
