"""The three roots of a hakit node (interface contract), overridable by environment variables.

`HAKIT_ETC` (default `/etc/hakit`), `HAKIT_VAR` (default `/var/lib/hakit`) and `HAKIT_LOG`
(default `/var/log/hakit`). Everything else is derived from them here, in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Paths:
    etc: Path
    var: Path
    log: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Paths:
        e = os.environ if env is None else env
        return cls(
            etc=Path(e.get("HAKIT_ETC", "/etc/hakit")),
            var=Path(e.get("HAKIT_VAR", "/var/lib/hakit")),
            log=Path(e.get("HAKIT_LOG", "/var/log/hakit")),
        )

    @property
    def cluster_config(self) -> Path:
        return self.etc / "cluster.yaml"

    @property
    def modules(self) -> Path:
        return self.etc / "modules"

    @property
    def tokens(self) -> Path:
        """The cluster's API tokens (hashes only), the same on every node (ADR 0004)."""
        return self.etc / "tokens.json"

    @property
    def socket(self) -> Path:
        """Unix socket of the local daemon's API."""
        return self.var / "hakit.sock"

    @property
    def daemon_log(self) -> Path:
        return self.log / "hakit.log"

    @property
    def events_log(self) -> Path:
        """Timeline of decisions, one JSON object per line."""
        return self.log / "events.jsonl"

    @property
    def audit_log(self) -> Path:
        """The audit trail: every command and configuration change, one JSON object per line."""
        return self.log / "audit.jsonl"


LOG_DIR_MODE = 0o750
LOG_FILE_MODE = 0o640


def open_log(path: Path) -> TextIO:
    """Open a log for appending, readable by root and the log's group only (as the journal):
    its folder 0750 and the file 0640, also when they already exist with wider modes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o7777 & ~LOG_DIR_MODE:
        os.chmod(path.parent, LOG_DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        os.fchmod(fd, LOG_FILE_MODE)
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
