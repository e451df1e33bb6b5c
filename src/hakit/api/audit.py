"""The audit trail: one record per command or configuration change (ADR 0004).

Records are written through the daemon's logging queue (never blocking the event loop) to
`audit.jsonl` (0640, beside `events.jsonl`) and, as a sentence, to `hakit.log` and the journal.
`query` reads them back, newest last, bounded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hakit.api.jsonl import read_back

AUDIT_LOGGER = "hakit.audit"
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

    def keep(rec: dict[str, Any]) -> bool:
        return (
            (module is None or rec.get("module") == module)
            and (who is None or who in _who_keys(rec.get("who")))
            and not (failed and rec.get("result") == "ok")
        )

    return read_back(path, keep, limit, since)


def _who_keys(who: object) -> set[str]:
    if not isinstance(who, dict):
        return set()
    return {str(who[k]) for k in ("token", "name", "node", "user", "uid") if k in who}
