"""A commit ledger for lab tests and demos: what a client was acknowledged, recorded outside the
node that may die.

    python -m hakit.lab.ledger ACKED SECONDS -- PROGRAM ARGS...

runs PROGRAM ARGS for i = 1, 2, 3... (every `{i}` in ARGS replaced by the number), one at a
time, for SECONDS, and appends `i` to the file ACKED once PROGRAM exited 0 — a commit the
database acknowledged (`psql -c "insert into t values ({i})"`). A run that fails, or takes more
than `--timeout` seconds (a connection to a primary that is gone), is not acknowledged: the
next number is tried after a pause. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hakit.lab.ledger")
    p.add_argument("acked", help="file the acknowledged numbers are appended to")
    p.add_argument("seconds", type=float, help="how long to keep writing")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one run may take")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS ({i}: the number)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    end = time.monotonic() + args.seconds
    i = 0
    with open(args.acked, "a") as acked:
        while time.monotonic() < end:
            i += 1
            try:
                r = subprocess.run(
                    [a.replace("{i}", str(i)) for a in command],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=args.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                acked.write(f"{i}\n")
                acked.flush()
            else:
                time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
