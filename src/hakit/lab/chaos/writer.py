"""The chaos campaign's writer, run in a lab client: records 1, 2, 3... appended through the
module's VIP, each acknowledgement logged outside the nodes once the node fsync'd the record.

    python -m hakit.lab.chaos.writer URL ACKED STOPFILE [--timeout S] [--seconds S]

POSTs the number to URL (`http://VIP:PORT/append`) and, on `200 ok N NODE`, appends
`N NODE TIME` to ACKED (flushed at once). A request that fails or times out is not
acknowledged and its number is not reused. Stops when STOPFILE exists or after `--seconds`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hakit.lab.chaos.writer")
    p.add_argument("url")
    p.add_argument("acked")
    p.add_argument("stopfile")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=6 * 3600.0)
    args = p.parse_args(argv)
    end = time.monotonic() + args.seconds
    n = 0
    with open(args.acked, "a") as acked:
        while time.monotonic() < end and not os.path.exists(args.stopfile):
            n += 1
            req = urllib.request.Request(args.url, data=str(n).encode(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=args.timeout) as r:
                    words = r.read(200).decode(errors="replace").split()
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
                continue
            if len(words) == 3 and words[0] == "ok" and words[1] == str(n):
                acked.write(f"{n} {words[2]} {time.time():.3f}\n")
                acked.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
