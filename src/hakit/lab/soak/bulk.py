"""The soak's bulk writer, run on the mirror's primary: replication at full speed.

    python -m hakit.lab.soak.bulk DIR STOPFILE [--chunk MIB] [--files N] [--file-mib MIB]

Writes CHUNK MiB blocks, each followed by fsync (both copies, with `mode: sync`), into N files
of FILE-MIB MiB in DIR, round and round (the disk use stays bounded); prints `TIME BYTES ERRORS`
(totals) once a second on stdout. A failed write is counted, reported on stderr, and retried a
second later (a soak without faults should count none). Stops when STOPFILE exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hakit.lab.soak.bulk")
    p.add_argument("dir")
    p.add_argument("stopfile")
    p.add_argument("--chunk", type=int, default=1, help="MiB per write (then fsync)")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--file-mib", type=int, default=8)
    p.add_argument("--seconds", type=float, default=48 * 3600.0)
    args = p.parse_args(argv)
    block = os.urandom(args.chunk << 20)
    per_file = max(1, args.file_mib // args.chunk)
    total = errors = 0
    end = time.monotonic() + args.seconds
    next_report = 0.0
    index = 0
    while time.monotonic() < end and not os.path.exists(args.stopfile):
        path = os.path.join(args.dir, f"bulk-{index % args.files}")
        index += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for _ in range(per_file):
                    os.write(fd, block)
                    os.fsync(fd)
                    total += len(block)
                    if time.monotonic() >= next_report:
                        print(f"{time.time():.3f} {total} {errors}", flush=True)
                        next_report = time.monotonic() + 1.0
            finally:
                os.close(fd)
        except OSError as e:
            errors += 1
            print(f"bulk: {path}: {e}", file=sys.stderr, flush=True)
            time.sleep(1.0)
    print(f"{time.time():.3f} {total} {errors}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
