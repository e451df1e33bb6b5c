"""Module packages: install a module folder or a `NAME.hakit` zip, uninstall, package.

Used by the CLI on this node and by the daemon's API for `--all` (the CLI sends the package to
every node). Installing validates the module against this node's cluster configuration first:
nothing is written for an invalid module, and the switch to the new folder is a rename.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

from hakit.config.clashes import refuse_clashes
from hakit.config.load import load_cluster
from hakit.config.module import MODULE_FILE, ModuleFile, load_module
from hakit.errors import HakitError
from hakit.paths import Paths

PACKAGE_SUFFIX = ".hakit"


def _unpack(source: Path, into: Path) -> Path:
    """A module folder from a folder or a `.hakit` zip; returns the folder holding module.yaml."""
    if source.is_dir():
        return source
    if not zipfile.is_zipfile(source):
        raise HakitError(f"{source}: neither a module folder nor a {PACKAGE_SUFFIX} zip package")
    with zipfile.ZipFile(source) as z:
        for member in z.namelist():
            p = Path(member)
            if p.is_absolute() or ".." in p.parts:
                raise HakitError(f"{source}: unsafe path {member!r} in the package")
        z.extractall(into)
        for info in z.infolist():  # keep the executable bits of scripts
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (into / info.filename).chmod(mode)
    candidates = [into, *sorted(p for p in into.iterdir() if p.is_dir())]
    for c in candidates:
        if (c / MODULE_FILE).is_file():
            return c
    raise HakitError(f"{source}: no {MODULE_FILE} in the package")


def install(paths: Paths, source: Path, name: str | None, force: bool) -> ModuleFile:
    cluster = load_cluster(paths.cluster_config, with_secret=False).config
    with tempfile.TemporaryDirectory(prefix="hakit-module-") as tmp:
        folder = _unpack(source, Path(tmp))
        default = folder.name if folder != Path(tmp) else source.name.removesuffix(PACKAGE_SUFFIX)
        mname = name or default
        mf = load_module(folder, cluster, name=mname)
        refuse_clashes(mf, paths.modules, cluster)  # ports and VIPs of the installed modules
        target = paths.modules / mname
        if target.exists() and not force:
            raise HakitError(f"module {mname} is already installed ({target}); --force replaces it")
        paths.modules.mkdir(parents=True, exist_ok=True)
        staging = paths.modules / f".{mname}.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging, symlinks=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return load_module(target, cluster)


def package_bytes(folder: Path) -> bytes:
    """The zip of a module folder (scripts keep their executable bit)."""
    if not (folder / MODULE_FILE).is_file():
        raise HakitError(f"{folder}: no {MODULE_FILE}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                info = zipfile.ZipInfo.from_file(p, p.relative_to(folder).as_posix())
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


def uninstall(paths: Paths, name: str) -> Path:
    target = paths.modules / name
    if not (target / MODULE_FILE).is_file():
        raise HakitError(f"no module {name!r} installed in {paths.modules}")
    shutil.rmtree(target)
    return target
