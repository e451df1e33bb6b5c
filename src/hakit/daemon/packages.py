"""Module packages: install a module folder or a `NAME.hakit` zip, uninstall, package.

Used by the CLI on this node and by the daemon's API for `--all` (the CLI sends the package to
every node). Installing validates the module against this node's cluster configuration first:
nothing is written for an invalid module, and the switch to the new folder is a rename.

Policy (docs/security.md, "Limits on input"): at most 2 000 entries, 16 MiB per file and
64 MiB in all, counted on the bytes really read; files, folders and symbolic links only (a
FIFO, socket or device is refused); a link is kept as a link if it is relative and stays
inside the module, any other link is refused with its path.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO

from hakit.config.clashes import refuse_clashes
from hakit.config.load import load_cluster
from hakit.config.model import Cluster
from hakit.config.module import MODULE_FILE, ModuleFile, load_module
from hakit.errors import ConfigError, HakitError
from hakit.paths import Paths

PACKAGE_SUFFIX = ".hakit"
MAX_ENTRIES = 2000  # files, folders and links in one module
MAX_FILE = 16 << 20  # bytes of one file
MAX_TOTAL = 64 << 20  # bytes of all files
_CHUNK = 1 << 16


class _Budget:
    """Counts what a module holds, against the limits, as it is read (never trusting sizes
    that a zip's headers claim)."""

    def __init__(self, where: str) -> None:
        self.where, self.entries, self.total = where, 0, 0

    def entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise HakitError(f"{self.where}: more than {MAX_ENTRIES} files and folders ({name})")

    def copy(self, src: IO[bytes], dst: IO[bytes], name: str) -> None:
        size = 0
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            self.total += len(chunk)
            if size > MAX_FILE:
                raise HakitError(f"{self.where}: {name} is larger than {MAX_FILE >> 20} MiB")
            if self.total > MAX_TOTAL:
                raise HakitError(f"{self.where}: the module is larger than {MAX_TOTAL >> 20} MiB")
            dst.write(chunk)


def _link_target(where: str, name: str, target: str) -> str:
    """A symbolic link is kept only if it is relative and stays inside the module."""
    inside = PurePosixPath(name).parent / target
    if target.startswith("/") or "\0" in target or _escapes(inside):
        raise HakitError(
            f"{where}: {name} links to {target!r}, outside the module: only relative links "
            "that stay inside the module folder are allowed (copy the file in instead)"
        )
    return target


def _escapes(p: PurePosixPath) -> bool:
    depth = 0
    for part in p.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _member_path(where: str, name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if not name or name.startswith("/") or "\0" in name or ".." in p.parts:
        raise HakitError(f"{where}: unsafe path {name!r} in the package")
    return p


def _unzip(source: Path, into: Path) -> None:
    where = str(source)
    budget = _Budget(where)
    with zipfile.ZipFile(source) as z:
        for info in z.infolist():
            rel = _member_path(where, info.filename)
            budget.entry(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)
            dest = into / rel
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if kind == stat.S_IFLNK:
                target = z.read(info)[:4096].decode("utf-8", "replace")
                os.symlink(_link_target(where, info.filename, target), dest)
            elif kind in (0, stat.S_IFREG):
                with z.open(info) as src, open(dest, "xb") as dst:
                    budget.copy(src, dst, info.filename)
                mode = (info.external_attr >> 16) & 0o777
                if mode:  # keep the executable bits of scripts
                    dest.chmod(mode)
            else:
                raise HakitError(f"{where}: {info.filename} is not a file, folder or link")


def _walk(folder: Path) -> Iterator[tuple[Path, str]]:
    """Every entry of a module folder with its kind ("dir", "file", "link"), checked against
    the policy: no special files, links relative and inside, within the limits."""
    where = str(folder)
    budget = _Budget(where)
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            p = Path(top) / name
            rel = p.relative_to(folder).as_posix()
            budget.entry(rel)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                _link_target(where, rel, os.readlink(p))
                yield p, "link"
            elif stat.S_ISDIR(st.st_mode):
                yield p, "dir"
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > MAX_FILE:
                    raise HakitError(f"{where}: {rel} is larger than {MAX_FILE >> 20} MiB")
                budget.total += st.st_size
                if budget.total > MAX_TOTAL:
                    raise HakitError(f"{where}: the module is larger than {MAX_TOTAL >> 20} MiB")
                yield p, "file"
            else:
                raise HakitError(
                    f"{where}: {rel} is not a file, folder or link (a FIFO, socket or device "
                    "cannot be part of a module)"
                )
        dirs[:] = [d for d in dirs if not (Path(top) / d).is_symlink()]


def _unpack(source: Path, into: Path) -> Path:
    """A module folder from a folder or a `.hakit` zip; returns the folder holding module.yaml."""
    if source.is_dir():
        for _ in _walk(source):  # the same policy as a package
            pass
        return source
    if not zipfile.is_zipfile(source):
        raise HakitError(f"{source}: neither a module folder nor a {PACKAGE_SUFFIX} zip package")
    try:
        _unzip(source, into)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError) as e:
        raise HakitError(f"{source}: damaged package ({e})") from None
    candidates = [into, *sorted(p for p in into.iterdir() if p.is_dir() and not p.is_symlink())]
    for c in candidates:
        if (c / MODULE_FILE).is_file():
            return c
    raise HakitError(f"{source}: no {MODULE_FILE} in the package")


def _checked(
    paths: Paths, source: Path, tmp: Path, name: str | None, cluster: Cluster
) -> tuple[Path, ModuleFile]:
    """Unpack `source` (a folder or a package) into `tmp` under the package policy and check
    it as the daemon will load it, against the modules installed here: (its folder, module).
    Errors name the file as `SOURCE/…/module.yaml` (inside the package), not the temporary
    copy."""
    try:
        folder = _unpack(source, tmp)
        default = folder.name if folder != tmp else source.name.removesuffix(PACKAGE_SUFFIX)
        mf = load_module(folder, cluster, name=name or default)
        refuse_clashes(mf, paths.modules, cluster)  # ports and VIPs of the installed modules
    except ConfigError as e:
        inside = str(source) if source.is_file() else str(source.parent)
        raise ConfigError(
            [replace(i, file=i.file.replace(str(tmp), inside, 1)) for i in e.issues]
        ) from None
    return folder, mf


def check(paths: Paths, source: Path, name: str | None = None) -> ModuleFile:
    """Check a module folder or package exactly as `install` would, installing nothing."""
    cluster = load_cluster(paths.cluster_config, with_secret=False).config
    with tempfile.TemporaryDirectory(prefix="hakit-check-") as tmp:
        return _checked(paths, source, Path(tmp), name, cluster)[1]


def install(paths: Paths, source: Path, name: str | None, force: bool) -> ModuleFile:
    cluster = load_cluster(paths.cluster_config, with_secret=False).config
    with tempfile.TemporaryDirectory(prefix="hakit-module-") as tmp:
        folder, mf = _checked(paths, source, Path(tmp), name, cluster)
        mname = mf.name
        target = paths.modules / mname
        if target.exists() and not force:
            raise HakitError(f"module {mname} is already installed ({target}); --force replaces it")
        paths.modules.mkdir(parents=True, exist_ok=True)
        staging = paths.modules / f".{mname}.new"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(folder, staging, symlinks=True)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise HakitError(f"cannot install module {mname} in {paths.modules}: {e}") from None
    return load_module(target, cluster)


def package_bytes(folder: Path) -> bytes:
    """The zip of a module folder: scripts keep their executable bit, links stay links (the
    policy of `_walk`: relative links inside the module only, no special files)."""
    if not (folder / MODULE_FILE).is_file():
        raise HakitError(f"{folder}: no {MODULE_FILE}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p, kind in _walk(folder):
            rel = p.relative_to(folder).as_posix()
            if kind == "link":
                info = zipfile.ZipInfo(rel)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                z.writestr(info, os.readlink(p))
            elif kind == "dir":
                z.writestr(zipfile.ZipInfo.from_file(p, rel), b"")
            else:
                info = zipfile.ZipInfo.from_file(p, rel)
                with p.open("rb") as f:
                    z.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def package(folder: Path, output: Path | None) -> Path:
    output = output or Path(folder.resolve().name + PACKAGE_SUFFIX)
    output.write_bytes(package_bytes(folder))
    return output


def install_bytes(paths: Paths, data: bytes, name: str, force: bool) -> ModuleFile:
    """Install a package received over the API."""
    with tempfile.TemporaryDirectory(prefix="hakit-package-") as tmp:
        pkg = Path(tmp) / f"{name}{PACKAGE_SUFFIX}"
        pkg.write_bytes(data)
        return install(paths, pkg, name, force)


def check_bytes(paths: Paths, data: bytes, name: str) -> ModuleFile:
    """Check a package received over the API exactly as `install_bytes` would, installing
    nothing; errors name the files as `NAME.hakit/…`."""
    with tempfile.TemporaryDirectory(prefix="hakit-package-") as tmp:
        pkg = Path(tmp) / f"{name}{PACKAGE_SUFFIX}"
        pkg.write_bytes(data)
        try:
            return check(paths, pkg, name)
        except ConfigError as e:
            raise ConfigError(
                [replace(i, file=i.file.replace(tmp + "/", "", 1)) for i in e.issues]
            ) from None


def uninstall(paths: Paths, name: str) -> Path:
    target = paths.modules / name
    if not (target / MODULE_FILE).is_file():
        raise HakitError(f"no module {name!r} installed in {paths.modules}")
    shutil.rmtree(target)
    return target
