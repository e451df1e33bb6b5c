"""The chaos campaign's farm client, run in a lab client: requests 1, 2, 3... to the farm's VIP
from many source addresses in turn, each retried until answered or `--bound` seconds passed;
every request's outcome logged outside the nodes.

    python -m hakit.lab.chaos.farmclient VIP LOG STOPFILE --sources A-B [--bound S]

Appends `N NODE ATTEMPTS FIRST_TRY ANSWERED` per answered request and `N - ATTEMPTS FIRST_TRY -`
per request still unanswered after `--bound` seconds. Stops when STOPFILE exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hakit.lab.webclient import connect, request, sources_of


def ask(vip: str, source: str | None, limit: float) -> str | None:
    try:
        sock = connect(vip, 80, source, limit)
    except OSError:
        return None
    try:
        return request(sock, vip, False, limit)
    except OSError:
        return None
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hakit.lab.chaos.farmclient")
    p.add_argument("vip")
    p.add_argument("log")
    p.add_argument("stopfile")
    p.add_argument("--sources", default=None)
    p.add_argument("--bound", type=float, default=20.0, help="seconds a request may be retried")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds one try may take")
    p.add_argument("--pause", type=float, default=0.02, help="seconds between requests")
    args = p.parse_args(argv)
    sources = sources_of(args.sources)
    n = 0
    with open(args.log, "a") as log:
        while not os.path.exists(args.stopfile):
            n += 1
            first = time.time()
            attempts = 0
            who = None
            while who is None and time.time() - first < args.bound:
                source = sources[(n + attempts) % len(sources)]
                attempts += 1
                who = ask(args.vip, source, args.timeout)
                if who is None:
                    time.sleep(0.05)
            answered = f"{time.time():.3f}" if who else "-"
            log.write(f"{n} {who or '-'} {attempts} {first:.3f} {answered}\n")
            log.flush()
            time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
