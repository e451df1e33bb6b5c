"""Which paths of a replicated directory are replicated. Pure.

A path is relative to the replicated directory (bytes, no leading slash). Rules:
- `exclude`: a listed path and everything under it is not replicated;
- `exclude_regex`: a path matching one of the expressions (searched anywhere in the path,
  anchor with `^`/`$` yourself) is not replicated, nor anything under it;
- `only` / `only_regex` ("only these"): when given, a path is replicated only if it is a listed
  path, under one, an ancestor directory of one (so that it can exist on the replica), or
  matches an expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix + b"/")


@dataclass(frozen=True)
class PathFilter:
    exclude: tuple[bytes, ...] = ()
    exclude_regex: tuple[str, ...] = ()
    only: tuple[bytes, ...] = ()
    only_regex: tuple[str, ...] = ()
    _ex: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _only: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ex", tuple(re.compile(r) for r in self.exclude_regex))
        object.__setattr__(self, "_only", tuple(re.compile(r) for r in self.only_regex))

    @property
    def everything(self) -> bool:
        return not (self.exclude or self.exclude_regex or self.only or self.only_regex)

    def replicated(self, path: bytes) -> bool:
        if not path or self.everything:
            return True
        if any(_under(path, p) for p in self.exclude):
            return False
        text = path.decode("utf-8", "surrogateescape")
        parts = text.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(r.search(p) for r in self._ex for p in prefixes):
            return False
        if not (self.only or self.only_regex):
            return True
        if any(_under(path, p) or _under(p, path) for p in self.only):
            return True
        return any(r.search(p) for r in self._only for p in prefixes)
