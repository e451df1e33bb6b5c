"""Module packages against the real file system: limits on real bytes, no special files, the
symlink policy, nothing left behind on a refusal (issue 12, finding 6, packages)."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from hakit.config.module import MODULE_NAME
from hakit.config.starter import new_secret, render_cluster_yaml
from hakit.daemon.packages import MAX_ENTRIES, install, install_bytes, package_bytes
from hakit.errors import HakitError
from hakit.paths import Paths

GOOD = "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(etc=tmp_path / "etc", var=tmp_path / "var", log=tmp_path / "log")
    p.etc.mkdir()
    spec = {"node1": {"lo": "127.0.0.11"}, "node2": {"lo": "127.0.0.12"}}
    (p.etc / "cluster.yaml").write_text(render_cluster_yaml("loop", spec, port=5999))
    (p.etc / "cluster.key").write_text(new_secret())
    return p


def module(tmp_path: Path, name: str = "web") -> Path:
    folder = tmp_path / "src" / name
    (folder / "bin").mkdir(parents=True)
    (folder / "module.yaml").write_text(GOOD)
    (folder / "bin" / "start").write_text("#!/bin/sh\n")
    (folder / "bin" / "start").chmod(0o755)
    return folder


def zipped(tmp_path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    out = tmp_path / "web.hakit"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("module.yaml", GOOD)
        for info, data in members:
            z.writestr(info, data)
    return out


def refused(paths: Paths, source: Path, expected: str) -> None:
    with pytest.raises(HakitError, match=expected):
        install(paths, source, "web", False)
    leftovers = list(paths.modules.iterdir()) if paths.modules.exists() else []
    assert leftovers == [], leftovers


def test_a_zip_bomb_is_refused_on_the_bytes_really_read(paths: Paths, tmp_path: Path) -> None:
    pkg = zipped(tmp_path, [("data/zeros", bytes(17 << 20))])
    assert pkg.stat().st_size < 100_000
    refused(paths, pkg, "data/zeros is larger than 16 MiB")


def test_a_module_larger_than_64_mib_in_all_is_refused(paths: Paths, tmp_path: Path) -> None:
    pkg = zipped(tmp_path, [(f"data/z{i}", bytes(15 << 20)) for i in range(5)])
    refused(paths, pkg, "larger than 64 MiB")


def test_too_many_entries_are_refused(paths: Paths, tmp_path: Path) -> None:
    pkg = zipped(tmp_path, [(f"f/{i}", b"") for i in range(MAX_ENTRIES + 1)])
    refused(paths, pkg, f"more than {MAX_ENTRIES} files")


def test_a_fifo_in_a_module_folder_is_refused_without_a_staging_folder(
    paths: Paths, tmp_path: Path
) -> None:
    folder = module(tmp_path)
    os.mkfifo(folder / "bin" / "pipe")
    refused(paths, folder, "bin/pipe is not a file, folder or link")
    with pytest.raises(HakitError, match="bin/pipe is not a file"):
        package_bytes(folder)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../.."])
def test_links_out_of_the_module_are_refused(paths: Paths, tmp_path: Path, target: str) -> None:
    folder = module(tmp_path)
    (folder / "bin" / "link").symlink_to(target)
    refused(paths, folder, "outside the module")
    with pytest.raises(HakitError, match="outside the module"):
        package_bytes(folder)
    link = zipfile.ZipInfo("bin/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(paths, zipped(tmp_path, [(link, target.encode())]), "outside the module")


def test_links_inside_the_module_are_kept_as_links_through_a_package(
    paths: Paths, tmp_path: Path
) -> None:
    folder = module(tmp_path)
    (folder / "lib").mkdir()
    (folder / "lib" / "common.sh").write_text("x=1\n")
    (folder / "bin" / "common.sh").symlink_to("../lib/common.sh")
    (folder / "shared").symlink_to("lib")  # a folder link: once silently dropped by --all
    install_bytes(paths, package_bytes(folder), "web", False)
    target = paths.modules / "web"
    assert os.readlink(target / "bin" / "common.sh") == "../lib/common.sh"
    assert os.readlink(target / "shared") == "lib"
    assert (target / "shared" / "common.sh").read_text() == "x=1\n"
    assert os.access(target / "bin" / "start", os.X_OK)


@pytest.mark.parametrize("member", ["/abs", "../up", "a/../../up"])
def test_unsafe_member_paths_are_refused(paths: Paths, tmp_path: Path, member: str) -> None:
    refused(paths, zipped(tmp_path, [(member, b"x")]), "unsafe path")


def test_a_module_name_with_a_trailing_newline_is_not_a_name() -> None:
    assert MODULE_NAME.match("web")
    assert not MODULE_NAME.match("web\n")


def test_a_damaged_package_is_a_clear_error(paths: Paths, tmp_path: Path) -> None:
    pkg = zipped(tmp_path, [("data/f", bytes(1000))])
    raw = bytearray(pkg.read_bytes())
    at = raw.find(b"data/f") + 40  # inside the compressed data of the member
    raw[at : at + 20] = bytes(20)
    pkg.write_bytes(bytes(raw))
    with pytest.raises(HakitError):
        install(paths, pkg, "web", False)
    assert not paths.modules.exists() or list(paths.modules.iterdir()) == []


def test_install_bytes_of_garbage_is_a_clear_error(paths: Paths) -> None:
    with pytest.raises(HakitError, match="neither a module folder nor"):
        install_bytes(paths, io.BytesIO(b"garbage").getvalue(), "web", False)
