"""Start a command detached from its caller and print its PID.

    python -m hakit.lab.spawn LOG ARGV...

ARGV runs in its own session, stdin from /dev/null, stdout and stderr appended to LOG. This
intermediate process exits at once, so the command is never the caller's child: a CLI that
exits or a test process that lives on never leaves a zombie behind, and the PID printed is the
command's own (nsenter execs in place when no PID namespace is entered).
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> None:
    log, command = argv[1], argv[2:]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    print(proc.pid, flush=True)


if __name__ == "__main__":
    main(sys.argv)
