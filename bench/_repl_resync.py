"""Part 4 of bench/replication.py: resynchronisation of a secondary, the full copy to an
empty one and after changes made while it was away.

Not a benchmark itself; `python bench/replication.py` finds it next to the script."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from _common import stats
from _repl_base import GEN, TARGETS, MiB, empty_dir, say, verify_replica
from _repl_replica import Bench, Replica

SUM_BLOCK = 64 * 1024  # the resynchronisation compares and sends blocks of this size


# -- 4. resynchronisation --------------------------------------------------------------------------


def make_data_set(root: Path, files: int, file_mib: int) -> list[str]:
    """`files` files of random data, 16 per subdirectory; their relative paths."""
    names = []
    for i in range(files):
        rel = f"d{i // 16:03d}/f{i:04d}"
        p = root / rel
        p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as f:
            for _ in range(file_mib):
                f.write(os.urandom(MiB))
        names.append(rel)
    os.sync()
    return names


def change_data(
    root: Path, names: list[str], file_size: int, fraction: float, piece: int, rng: random.Random
) -> dict[str, Any]:
    """Rewrite `fraction` of the data set in place: pieces of `piece` bytes at random 4 KiB
    aligned offsets of randomly chosen files, then fsync every file touched."""
    total = len(names) * file_size
    n = max(1, round(total * fraction / piece))
    where: dict[str, list[int]] = {}
    for _ in range(n):
        rel = rng.choice(names)
        where.setdefault(rel, []).append(rng.randrange(0, (file_size - piece) // 4096 + 1) * 4096)
    blocks: set[tuple[str, int]] = set()
    t0 = time.monotonic()
    for rel, offsets in where.items():
        fd = os.open(root / rel, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for off in offsets:
                os.pwrite(fd, rng.randbytes(piece), off)
                blocks.update(
                    (rel, b) for b in range(off // SUM_BLOCK, (off + piece - 1) // SUM_BLOCK + 1)
                )
            os.fsync(fd)
        finally:
            os.close(fd)
    return {
        "pieces": n,
        "piece_bytes": piece,
        "bytes_written": n * piece,
        "files_touched": len(where),
        "blocks_64k_touched": len(blocks),  # the least a 64 KiB-block resync must send
        "seconds": time.monotonic() - t0,
    }


RESYNC_CASES = (
    ("full", "full copy to an empty secondary"),
    ("tracked", "secondary away, tracked (64 KiB pieces)"),
    ("tracked_8k", "secondary away, tracked (8 KiB pieces)"),
    ("untracked", "secondary away, no usable tracking"),
    ("crash", "primary killed while alone, tracked"),
)


def part_resync(bench: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    rep = Replica(bench, "rs", "sync")
    file_size = args.resync_file_mib * MiB
    total = args.resync_files * file_size
    rng = random.Random(args.seed)
    samples: list[dict[str, Any]] = []
    result["samples"]["resync"] = samples
    say(
        f"\n4. resynchronisation: {args.resync_files} files x {args.resync_file_mib} MiB "
        f"= {total / MiB:.0f} MiB, 1 % rewritten while the secondary is away, "
        f"{args.resync_rounds} rounds"
    )
    t0 = time.monotonic()
    names = make_data_set(rep.a, args.resync_files, args.resync_file_mib)
    say(f"  data set written in {time.monotonic() - t0:.1f} s")

    def record(r: int, case: str, label: str, sync: dict[str, Any], **more: Any) -> None:
        sample = {"round": r + 1, "case": case, **sync, **more}
        samples.append(sample)
        say(
            f"  round {r + 1}, {label:42}: sent {sync['bytes_sent'] / MiB:8.1f} MiB "
            f"({sync['bytes_sent'] / total * 100:6.2f} %) in {sync['seconds']:6.2f} s"
            f"{'' if sync['trust'] else ' [full compare]'}"
        )

    def away(
        piece: int, crash: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:  # -> (verification, change)
        rep.stop_secondary()
        verified = verify_replica(rep.a, rep.b, "resynchronisation")
        change = change_data(rep.a, names, file_size, 0.01, piece, rng)
        if crash:
            rep.crash_primary()
            rep.start_primary()
        rep.start_secondary()
        return verified, change

    labels = dict(RESYNC_CASES)
    for r in range(args.resync_rounds):
        if r:
            rep.stop()
            verify_replica(rep.a, rep.b, "resynchronisation")
            empty_dir(rep.b)
            empty_dir(rep.sb)
        os.sync()
        rep.start_secondary()
        if rep.primary is None:
            rep.start_primary()
        record(r, "full", labels["full"], rep.connect(""))
        for case, piece, gen, crash in (
            ("tracked", 64 * 1024, GEN, False),
            ("tracked_8k", 8 * 1024, GEN, False),
            ("untracked", 64 * 1024, "", False),
            ("crash", 64 * 1024, GEN, True),
        ):
            verified, change = away(piece, crash)
            samples[-1]["verified_after"] = verified
            os.sync()
            record(r, case, labels[case], rep.connect(gen), change=change)
    rep.stop()
    samples[-1]["verified_after"] = verify_replica(rep.a, rep.b, "resynchronisation")

    summary: dict[str, Any] = {
        "data_set_bytes": total,
        "files": args.resync_files,
        "targets": {
            "sent_pct_of_data": TARGETS["resync_sent_pct_of_data"],
            "time_pct_of_full_copy": TARGETS["resync_time_pct_of_full_copy"],
        },
    }
    full_by_round = {s["round"]: s["seconds"] for s in samples if s["case"] == "full"}
    for case, _ in RESYNC_CASES:
        mine = [s for s in samples if s["case"] == case]
        summary[case] = {
            "seconds": stats([s["seconds"] for s in mine]),
            "bytes_sent": stats([s["bytes_sent"] for s in mine]),
            "sent_pct_of_data": statistics.median(s["bytes_sent"] / total * 100 for s in mine),
            "time_pct_of_full_copy": statistics.median(
                s["seconds"] / full_by_round[s["round"]] * 100 for s in mine
            ),
            "trusted": [s["trust"] for s in mine],
        }
        if mine and "change" in mine[0]:
            summary[case]["change"] = {
                k: statistics.median(s["change"][k] for s in mine)
                for k in ("pieces", "bytes_written", "files_touched", "blocks_64k_touched")
            }
    result["summary"]["resync"] = summary
