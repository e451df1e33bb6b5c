"""The application of the chaos campaign's mirror module: appends records to a file in the
replicated directory and answers only once the record is fsync'd (on both disks, with
`mode: sync`).

    python -m hakit.lab.chaos.app PORT FILE NODE

`POST /append` with the record number as body appends `records.line(n)` to FILE, fsyncs it
and answers `200 ok N NODE`. A file that does not end with a newline (a record cut by a crash)
gets one first, so the next record stays intact. Lab only: it listens on the lab's addresses,
inside a node's namespaces, and reads at most 32 bytes of body.
"""

from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hakit.lab.chaos.records import line

MAX_BODY = 32


def append(path: str, n: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = line(n).encode()
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def serve(port: int, path: str, node: str) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY)).decode(errors="replace").strip()
            if self.path != "/append" or length > MAX_BODY or not body.isdigit():
                self._answer(400, "bad request")
                return
            try:
                with lock:
                    append(path, int(body))
            except OSError as e:
                self._answer(503, f"not written: {e.strerror}")
                return
            self._answer(200, f"ok {body} {node}")

        def do_GET(self) -> None:
            self._answer(200, f"served by {node}")

        def _answer(self, code: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer(("0.0.0.0", port), Handler) as server:
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[0].isdigit():
        print("usage: python -m hakit.lab.chaos.app PORT FILE NODE", file=sys.stderr)
        return 2
    serve(int(args[0]), args[1], args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
