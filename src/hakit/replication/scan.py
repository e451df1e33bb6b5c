"""Reading a replicated tree for comparison: its entries with metadata, and block checksums.

Both replicas are read the same way (the primary below its FUSE mount, through the handle it
opened before mounting; the secondary through the receiver's handle), so that resynchronisation
and `hakit verify` compare like with like. Nothing here follows a symbolic link.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator

from hakit.replication.apply import parent_of
from hakit.wire.replication import DIGEST, Entry

SUM_BLOCK = 64 * 1024
FUSE_HIDDEN = b".fuse_hidden"  # libfuse's name for a file unlinked while open


def xattr_pairs(path: bytes) -> list[tuple[bytes, bytes]]:
    """Extended attributes of `path` (a /proc/self/fd/... path), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    pairs = []
    for n in sorted(names):
        try:
            pairs.append((n.encode(), os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue  # removed meanwhile
    return pairs


def xattr_digest(pairs: list[tuple[bytes, bytes]]) -> bytes:
    if not pairs:
        return b""
    h = hashlib.blake2b(digest_size=DIGEST)
    for n, v in pairs:
        h.update(len(n).to_bytes(4, "big") + n + len(v).to_bytes(4, "big") + v)
    return h.digest()


def entry_of(d: int, name: bytes, path: bytes) -> Entry | None:
    """The entry for `name` in directory `d` (None: gone)."""
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return None
    target = b""
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=d)
        except OSError:
            return None
    proc = f"/proc/self/fd/{d}/".encode() + name
    return Entry(
        path=path,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        nlink=st.st_nlink,
        target=target,
        xattrs=b"" if stat.S_ISLNK(st.st_mode) else xattr_digest(xattr_pairs(proc)),
    )


def walk(
    roots: list[int], replicated: Callable[[int, bytes], bool] = lambda i, p: True
) -> Iterator[Entry]:
    """Every entry of every replicated directory, parents before their children.

    Paths are `INDEX/relative` (`INDEX` alone for the directory itself). `replicated(index,
    relative path)` leaves excluded paths out; libfuse's `.fuse_hidden*` files are skipped.
    """
    for i, root in enumerate(roots):
        top = str(i).encode()
        me = entry_of(root, b".", top)
        if me is None:
            continue
        yield me
        yield from _walk_dir(root, top, b"", lambda p, i=i: replicated(i, p))  # type: ignore[misc]


def walk_from(
    roots: list[int], path: bytes, replicated: Callable[[int, bytes], bool] = lambda i, p: True
) -> Iterator[Entry]:
    """`path` (a wire path) and, if it is a directory, every entry under it, like `walk`."""
    index, _, rel = path.partition(b"/")
    try:
        with parent_of(roots, path) as (d, name):
            e = entry_of(d, name, path)
            if e is None:
                return
            yield e
            if not stat.S_ISDIR(e.mode):
                return
            sub = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d
            )
    except OSError:
        return
    try:
        yield from _walk_dir(sub, index, rel, lambda p: replicated(int(index), p))
    finally:
        os.close(sub)


def _walk_dir(
    d: int, top: bytes, rel: bytes, replicated: Callable[[bytes], bool]
) -> Iterator[Entry]:
    try:
        names = sorted(os.fsencode(n) for n in os.listdir(d))
    except OSError:
        return
    for name in names:
        if name.startswith(FUSE_HIDDEN):
            continue
        r = rel + b"/" + name if rel else name
        if not replicated(r):
            continue
        e = entry_of(d, name, top + b"/" + r)
        if e is None:
            continue
        yield e
        if stat.S_ISDIR(e.mode):
            try:
                sub = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d
                )
            except OSError:
                continue
            try:
                yield from _walk_dir(sub, top, r, replicated)
            finally:
                os.close(sub)


def block_sums(fd: int, ranges: list[tuple[int, int]], block: int = SUM_BLOCK) -> bytes:
    """Digests of every `block` of the given (offset, length) ranges, concatenated.

    Ranges are aligned to `block` by the caller; bytes past the end of the file count as
    absent (a short or empty block has the digest of what exists).
    """
    out = bytearray()
    for offset, length in ranges:
        end = offset + length
        while offset < end:
            n = min(block, end - offset)
            data = os.pread(fd, n, offset)
            out += hashlib.blake2b(data, digest_size=DIGEST).digest()
            offset += n
    return bytes(out)
