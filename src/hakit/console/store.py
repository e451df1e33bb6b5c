"""The console's state: a folder of small JSON files, each mode 0600, written atomically.

    STATE/users.json      {NAME: {"role", "hash" (argon2id), "created", "changed"}}
    STATE/clusters.json   {NAME: {"nodes": [ADDR…], "token": "hkt_…", "ca": "sha256:…",
                                  "port": 7351, "added"}}
    STATE/sessions.json   {SHA256(session id): {"user", "created", "seen", "csrf"}}
    STATE/console.crt, console.key   the self-signed certificate made at the first start

Everything the console knows is there and nowhere else, so the folder can be replicated (a
hakit mirror module makes the console highly available: docs/console.md). The CLI and the
running console share the files: every reader checks the file's modification time and reloads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.adapters.statefile import write_json
from hakit.errors import HakitError

DEFAULT_STATE = Path("/var/lib/hakit/console")
STATE_ENV = "HAKIT_CONSOLE_STATE"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_FILE = 4 << 20  # no state file of the console is larger


class ConsoleError(HakitError):
    """A console command or request cannot be done: the message says why."""


def state_dir(given: str | Path | None = None) -> Path:
    """`--state`, else $HAKIT_CONSOLE_STATE, else /var/lib/hakit/console."""
    if given:
        return Path(given)
    env = os.environ.get(STATE_ENV)
    return Path(env) if env else DEFAULT_STATE


def check_name(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise ConsoleError(
            f"invalid {what} name {name!r}: a letter, then letters, digits, '_', '.' or '-' "
            "(at most 64)"
        )
    return name


@dataclass
class JsonFile:
    """One state file, reloaded when it changed on disk (another process, or a replica)."""

    path: Path
    _data: dict[str, Any] = field(default_factory=dict)
    _stamp: tuple[int, int] | None = None

    def read(self) -> dict[str, Any]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._data, self._stamp = {}, None
            return self._data
        except OSError as e:
            raise ConsoleError(f"cannot read {self.path}: {e.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            if st.st_size > MAX_FILE:
                raise ConsoleError(f"{self.path}: larger than {MAX_FILE} bytes")
            try:
                data = json.loads(self.path.read_bytes())
            except (OSError, ValueError) as e:
                raise ConsoleError(
                    f"{self.path}: unreadable ({e}); restore it or remove it"
                ) from None
            if not isinstance(data, dict):
                raise ConsoleError(f"{self.path}: not a JSON object; restore it or remove it")
            self._data, self._stamp = data, stamp
        return self._data

    def write(self, data: dict[str, Any]) -> None:
        write_json(self.path, data)
        self._data = data
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size)


class Store:
    """The console's state folder (created 0700 on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.users = JsonFile(root / "users.json")
        self.clusters = JsonFile(root / "clusters.json")
        self.sessions = JsonFile(root / "sessions.json")

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
        except OSError as e:
            raise ConsoleError(
                f"cannot create the console's state folder {self.root}: {e}"
            ) from None

    @property
    def cert(self) -> Path:
        return self.root / "console.crt"

    @property
    def key(self) -> Path:
        return self.root / "console.key"
