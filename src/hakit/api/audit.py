"""The audit trail: one record per command or configuration change (ADR 0004).

Records are written through the daemon's logging queue (never blocking the event loop) to
`audit.jsonl` (0640, beside `events.jsonl`) and, as a sentence, to `hakit.log` and the journal.
`query` reads them back, newest last, bounded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

AUDIT_LOGGER = "hakit.audit"
SCAN_LIMIT = 16 << 20  # bytes of the file read back at most (the newest)
MAX_MESSAGE = 300


def who_text(who: dict[str, Any]) -> str:
    """`token k7…(console, control) for alice`, `node node1 (cli)`, `root (uid 0, pid 812)`."""
    kind = who.get("kind")
    if kind == "token":
        text = f"token {who.get('token')} ({who.get('name')}, {who.get('role')})"
    elif kind == "node":
        text = f"node {who.get('node')}" + (f" ({who['via']})" if who.get("via") else "")
    else:
        text = f"uid {who.get('uid', '?')} (pid {who.get('pid', '?')}) on the unix socket"
    if who.get("user"):
        text += f" for {who['user']}"
    return text


def record(entry: dict[str, Any]) -> None:
    """Write one audit record (see `docs/api.md#audit` for its fields)."""
    who = who_text(entry["who"])
    outcome = f"{entry['status']} {entry['result']}"
    if entry.get("message"):
        outcome += f": {entry['message']}"
    logging.getLogger(AUDIT_LOGGER).info(
        "audit: %s from %s: %s %s → %s",
        who,
        entry.get("address") or "local",
        entry["method"],
        entry["path"],
        outcome,
        extra={"audit": entry},
    )


def _lines_from_end(path: Path) -> Iterator[str]:
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
            yield raw.decode("utf-8", "replace")


def query(
    path: Path,
    limit: int = 100,
    since: float | None = None,
    module: str | None = None,
    who: str | None = None,
    failed: bool = False,
) -> list[dict[str, Any]]:
    """Matching records, oldest first (at most `limit`, the newest). `who` matches a token id
    or name, a node, a user; `failed`: only refused or failed ones."""
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
        if module is not None and rec.get("module") != module:
            continue
        if who is not None and who not in _who_keys(rec.get("who")):
            continue
        if failed and rec.get("result") == "ok":
            continue
        out.append(rec)
        if len(out) >= limit:
            break
    out.reverse()
    return out


def _who_keys(who: object) -> set[str]:
    if not isinstance(who, dict):
        return set()
    return {str(who[k]) for k in ("token", "name", "node", "user", "uid") if k in who}
