"""The records of the chaos workload: numbered and checksummed, one line each, so a reader can
tell a record that is present and intact from one missing or corrupted (pure)."""

from __future__ import annotations

import hashlib
import zlib


def payload(n: int) -> str:
    """What record `n` carries (derived from `n`: the checker knows what to expect)."""
    return hashlib.sha256(f"hakit-chaos-{n}".encode()).hexdigest()[:32]


def line(n: int) -> str:
    body = f"{n} {payload(n)}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n"


def parse(text: str) -> tuple[dict[int, int], int]:
    """({record number: times present intact}, lines that are not an intact record)."""
    present: dict[int, int] = {}
    bad = 0
    for raw in text.splitlines():
        parts = raw.split(" ")
        if len(parts) != 3 or not parts[0].isdigit():
            bad += 1
            continue
        n = int(parts[0])
        if raw + "\n" != line(n):
            bad += 1
            continue
        present[n] = present.get(n, 0) + 1
    return present, bad
