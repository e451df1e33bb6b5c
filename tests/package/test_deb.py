"""The Debian package, end to end on this machine (root): built from the repository by
`packaging/build-deb`, its contents inspected, installed with apt-get, its commands, man pages
and completion used, a lab run with the installed hakit (HAKIT_INSTALLED), then removed and
purged — the node's folders kept. The package is removed even when a step fails.

Lab name: tpkg. A hakit package already installed on this machine stops the test (it would
be replaced, then removed).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import click
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hakit.cli.main import cli
from hakit.lab.errors import LabError
from hakit.lab.lab import Lab
from hakit.lab.mountpoints import remove_with_last_lab
from hakit.lab.namespaces import INSTALLED_ENV, hakit_argv
from hakit.waiting import wait_until
from tests.lab.modules import lab_up

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
LAB = "tpkg"
VENV = Path("/opt/venvs/hakit")
HAKIT = Path("/usr/bin/hakit")
# the node's folders and their modes (packaging/debian/postinst)
FOLDERS = {Path("/etc/hakit"): 0o755, Path("/var/lib/hakit"): 0o750, Path("/var/log/hakit"): 0o750}
MARK = ".hakit-package-test"
# development and build tools: never in the package (import names and distribution names)
DEV_TOOLS = {"pytest", "_pytest", "pytest_timeout", "hypothesis", "mypy", "ruff", "uv"}
DEV_TOOLS |= {"click_man", "types_pyyaml", "yaml-stubs", "mypy_extensions", "pip_tools", "moto"}
DEV_TOOLS |= {"boto3_stubs", "mypy_boto3_ec2", "botocore_stubs", "xdist", "pytest_xdist", "execnet"}
EXAMPLE = "/usr/share/hakit/examples/mirror-web"
VIP_URL = "http://10.100.1.100:8080/"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package (root)")
pytestmark = [
    pytest.mark.package,
    pytest.mark.lab,
    needs_root,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("dpkg-buildpackage", "dh_virtualenv", "apt-get", "nft")),
        reason="needs dpkg-dev, dh-virtualenv and nftables (./bootstrap.sh test installs them)",
    ),
]


def run(argv: list[str | Path], timeout: float = 120, **kw: object) -> str:
    r = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )  # type: ignore[call-overload]
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return str(r.stdout)


def dpkg_status() -> str | None:
    """dpkg's status of the hakit package ("install ok installed", "deinstall ok
    config-files", ...), None if dpkg does not know it."""
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "hakit"], capture_output=True, text=True, timeout=30
    )
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def apt(*args: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *args], env=env)


# -- the built package ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("deb")
    try:
        start = time.monotonic()
        print(run([ROOT / "packaging" / "build-deb", "--out", out], timeout=900).strip())
        debs = sorted(out.glob("hakit_*.deb"))
        assert [d.name.split("_")[1] for d in debs] == [VERSION]
        size = debs[0].stat().st_size
        print(f"package build: {time.monotonic() - start:.0f} s, {size / 2**20:.1f} MiB")
        yield debs[0]
    finally:
        shutil.rmtree(out)


@pytest.fixture(scope="module")
def files(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The package's file list by path (without the leading ./), from the .deb itself."""
    data = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=120
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package's files, unpacked into a folder."""
    tree = tmp_path_factory.mktemp("unpacked")
    try:
        run(["dpkg-deb", "--extract", deb, tree])
        yield tree
    finally:
        shutil.rmtree(tree)


def site_packages(files: dict[str, tarfile.TarInfo]) -> str:
    found = {n for n in files if re.fullmatch(r"opt/venvs/hakit/lib/python3\.\d+/site-packages", n)}
    assert len(found) == 1, found
    return found.pop()


def test_the_package_holds_the_locked_dependencies_and_no_development_tool(
    files: dict[str, tarfile.TarInfo],
) -> None:
    site = site_packages(files)
    top = {n[len(site) + 1 :].split("/")[0] for n in files if n.startswith(site + "/")}
    dists: dict[str, str] = {}
    for entry in top:
        m = re.fullmatch(r"(.+)-([^-]+)\.dist-info", entry)
        if m:
            dists[canonicalize_name(m.group(1))] = m.group(2)
    # exactly what the lock says for this Python and platform, plus hakit and the venv's pip
    locked: dict[str, str] = {}
    for line in (ROOT / "packaging" / "requirements.lock").read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line.rstrip(" \\"))
            if req.marker is None or req.marker.evaluate():
                locked[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    assert dists.pop("hakit") == VERSION
    assert {"pip", "setuptools"} >= set(dists) - set(locked), set(dists) - set(locked)
    assert {k: v for k, v in dists.items() if k in locked} == locked
    assert {"hakit", "pydantic", "boto3", "azure", "google"} <= top  # the cloud movers' too
    # no development or build tool, as a package, a distribution or a command
    names = {canonicalize_name(t) for t in top} | set(dists)
    tools = {canonicalize_name(t) for t in DEV_TOOLS}
    assert not names & tools, f"development tools in the package: {names & tools}"
    commands = {Path(n).name for n in files if n.startswith("opt/venvs/hakit/bin/")}
    assert "hakit" in commands
    assert not commands & {"pytest", "py.test", "mypy", "ruff", "uv", "click-man", "hypothesis"}


def test_the_package_ships_the_command_units_completion_and_policies(
    files: dict[str, tarfile.TarInfo], unpacked: Path
) -> None:
    link = files["usr/bin/hakit"]
    assert link.issym()
    assert link.linkname == "/opt/venvs/hakit/bin/hakit"
    examples = files["usr/share/hakit/examples"]
    assert examples.issym()
    assert examples.linkname == "/" + site_packages(files) + "/hakit/examples"
    assert site_packages(files) + "/hakit/examples/farm-web/module.yaml" in files
    for path in (
        "lib/systemd/system/hakit.service",
        "lib/systemd/system/hakit-witness.service",
        "etc/logrotate.d/hakit",
        "usr/share/bash-completion/completions/hakit",
        "usr/share/zsh/vendor-completions/_hakit",
        "usr/share/fish/vendor_completions.d/hakit.fish",
        "usr/share/doc/hakit/docs/install.md",
        "usr/share/doc/hakit/docs/witness.md",
        "usr/share/man/man1/hakit.1.gz",
        "usr/share/hakit/modules/postgresql.hakit",
        "usr/share/hakit/modules/nginx-farm.hakit",
    ):
        assert files[path].isfile(), path
    # the package creates the node's folders in postinst: dpkg never owns (so never removes) them
    for d in FOLDERS:
        assert str(d).lstrip("/") not in files
    for unit in ("hakit.service", "hakit-witness.service"):
        text = (unpacked / "lib/systemd/system" / unit).read_text()
        execs = re.findall(r"^Exec\w*=(\S+)", text, re.M)
        assert {e for e in execs if "hakit" in e} == {"/usr/bin/hakit"}, unit
        assert "/usr/local" not in text, unit


def walk(
    cmd: click.Command, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield from walk(sub, (*path, name))


def test_every_command_and_option_has_its_man_page(unpacked: Path) -> None:
    man = unpacked / "usr/share/man/man1"
    commands = list(walk(cli, ("hakit",)))
    assert len(commands) > 30
    for path, cmd in commands:
        page = man / ("-".join(path) + ".1.gz")
        assert page.exists(), f"no man page for `{' '.join(path)}`"
        text = gzip.decompress(page.read_bytes()).decode()
        assert text.startswith(f'.TH "{" ".join(path).upper()}" "1"'), page.name
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in (*p.opts, *p.secondary_opts):
                    escaped = opt.replace("-", "\\-")
                    assert escaped in text, f"{opt} missing from {page.name}"
        for sub in getattr(cmd, "commands", {}):
            assert f"\\fB{sub}\\fP" in text, f"{sub} missing from {page.name}"


def test_an_installation_that_is_not_there_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"HAKIT_INSTALLED=.*no hakit installation there"):
        hakit_argv({INSTALLED_ENV: str(tmp_path)})


# -- installed on this machine --------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[None]:
    """The package installed with apt-get; purged at the end whatever happened, with the test's
    marks in the node's folders, and those folders if the test made them (as the labs do)."""
    status = dpkg_status()
    assert status is None, (
        f"a hakit package is already on this machine ({status}): this test would replace "
        "and remove it; remove it first (`apt-get purge hakit`)"
    )
    made = [d for d in FOLDERS if not d.exists()]
    try:
        start = time.monotonic()
        apt("install", "--no-install-recommends", str(deb))
        print(f"package install: {time.monotonic() - start:.1f} s")
        yield
    finally:
        Lab(LAB).down(missing_ok=True)
        if dpkg_status() is not None:
            apt("purge", "hakit")
        for d in FOLDERS:
            (d / MARK).unlink(missing_ok=True)
        remove_with_last_lab(made)


@pytest.mark.usefixtures("installed")
def test_the_installed_command_runs_from_opt_with_man_pages_and_completion() -> None:
    assert HAKIT.resolve() == (VENV / "bin" / "hakit").resolve()
    assert (VENV / "bin" / "hakit").read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    assert run([HAKIT, "--version"]).strip() == VERSION
    helptext = run([HAKIT, "--help"])
    for name in ("daemon", "state", "module", "prim", "lab", "witness"):
        assert re.search(rf"^\s+{name}\s", helptext, re.M), name
    # hakit imports from the package's virtualenv, not from this checkout
    where = run([VENV / "bin" / "python", "-c", "import hakit; print(hakit.__file__)"]).strip()
    assert where.startswith(f"{VENV}/lib/python3")
    r = subprocess.run([VENV / "bin" / "python", "-c", "import pytest"], capture_output=True)
    assert r.returncode != 0
    # its byte code is up to date: a run that may write byte code adds or changes nothing
    code = "import hakit.daemon.runtime, hakit.lab.lab, hakit.replication.primary"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run([VENV / "bin" / "python", "-c", code], env=env)
    run([HAKIT, "state", "--help"], env=env)
    assert run(["dpkg", "--verify", "hakit"]) == ""
    owned = set(run(["dpkg", "-L", "hakit"]).splitlines())
    present = {str(p) for p in VENV.rglob("*")}
    assert present <= owned, f"not the package's: {sorted(present - owned)[:5]}"
    page = gzip.decompress(Path("/usr/share/man/man1/hakit-module-install.1.gz").read_bytes())
    assert b"\\-\\-all" in page
    # bash completion as bash does it: the shipped function asks the /usr/bin one
    script = (
        "source /usr/share/bash-completion/completions/hakit; complete -p hakit; "
        "COMP_WORDS=(hakit modu); COMP_CWORD=1; _hakit_completion hakit; "
        'printf "%s\\n" "${COMPREPLY[@]}"; '
        "COMPREPLY=(); COMP_WORDS=(hakit module ins); COMP_CWORD=2; _hakit_completion hakit; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = run(["bash", "--norc", "-c", script], env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
    assert "_hakit_completion hakit" in out
    assert out.splitlines()[1:] == ["module", "install"]
    # the node's folders, with their modes
    for d, mode in FOLDERS.items():
        assert d.is_dir()
        assert d.stat().st_mode & 0o7777 == mode, d
    # the units are shipped, not enabled (an operator decision)
    assert Path("/lib/systemd/system/hakit.service").is_file()
    assert not list(Path("/etc/systemd/system").glob("*.wants/hakit*.service"))
    # the logrotate policy is valid for logrotate itself
    if shutil.which("logrotate"):
        run(["logrotate", "--debug", "/etc/logrotate.d/hakit"])


TLS_EOF = """
import socket, threading, time
from hakit.replication.stream import TlsStream
from hakit.tls import client_context, dns_name, identity, server_context
secret = bytes(range(32))
a, b = socket.socketpair()
srv = TlsStream(a, server_context(identity(secret, "c", "node1")), server_side=True)
cli = TlsStream(b, client_context(identity(secret, "c", "node2")), server_side=False,
                server_hostname=dns_name("node1", "c"))
t = threading.Thread(target=srv.handshake, args=(time.monotonic() + 5,))
t.start()
cli.handshake(time.monotonic() + 5)
t.join()
cli.sendall(b"hello")
assert srv.recv(100) == b"hello"
b.shutdown(socket.SHUT_RDWR)  # the peer's end goes away with no TLS close_notify
srv.settimeout(5)
print(repr(srv.recv(100)))
"""


@pytest.mark.usefixtures("installed")
def test_the_installed_python_sees_the_end_of_a_replication_stream() -> None:
    """On Debian 12's Python (3.11.2) a TLS read at the end returns b"" instead of raising:
    the replication stream must take it as the end, not spin (a secondary stopping after its
    primary's power cut waited 30 s for the spinning thread before taking over)."""
    assert run([VENV / "bin" / "python", "-c", TLS_EOF], timeout=20).strip() == "b''"


def lab_hakit(lab: Lab, node: str, *args: str) -> str:
    r = lab.exec(node, ["hakit", *args], capture=True, check=False)
    assert r.returncode == 0, f"{node}: hakit {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def served(lab: Lab) -> str:
    code = f"import urllib.request as u; print(u.urlopen({VIP_URL!r}, timeout=1).read().decode())"
    r = lab.exec("client1", ["python3", "-c", code], capture=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.mark.usefixtures("installed")
def test_a_lab_mirror_fails_over_with_the_installed_hakit() -> None:
    """Two servers from zero with the installed hakit only (docs/deployment.md): nodes with no
    configuration, `cluster init` on node1, `add-node` prints a token, node2 joins with it;
    then the README's mirror tour — every `hakit` in the nodes the installed one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INSTALLED_ENV, str(VENV))
        start = time.monotonic()
        with lab_up(LAB, nodes=2, networks=1, clients=1, cluster=False) as lab:
            addresses = {n: f"{n}:net1={lab.address(n, 1)}" for n in lab.nodes}
            lab_hakit(lab, "node1", "cluster", "init", "--name", LAB, "--node", addresses["node1"])
            lab.start_daemons(["node1"])
            added = lab_hakit(lab, "node1", "cluster", "add-node", addresses["node2"], "--json")
            token = json.loads(added.splitlines()[-1])["token"]
            joined = lab_hakit(
                lab, "node2", "cluster", "join", lab.address("node1", 1), "--token", token
            )
            assert f"joined cluster {LAB} as node2" in joined
            lab_hakit(lab, "node2", "config", "check")
            lab.start_daemons(["node2"])
            wait_until(
                lambda: json.loads(lab_hakit(lab, "node2", "state", "--json"))["nodes"]["node1"][
                    "alive"
                ],
                15,
                "node2 hears node1",
            )
            for node in lab.nodes:
                daemon = lab.daemon_pid(node)
                assert daemon is not None
                assert cmdline(daemon)[:3] == [f"{VENV}/bin/python", f"{VENV}/bin/hakit", "daemon"]
                kids = wait_until(partial(children, daemon), 10, "the heartbeat process")
                assert all(cmdline(k)[0] == f"{VENV}/bin/python" for k in kids)
            lab_hakit(lab, "node1", "module", "install", EXAMPLE, "--all")
            lab_hakit(lab, "node1", "prim", "mirror-web")
            lab_hakit(lab, "node1", "second", "mirror-web", "--node", "node2")
            lab_hakit(lab, "node2", "wait", "mirror-web", "second", "--timeout", "60")
            wait_until(lambda: served(lab) == "served by node1", 15, "node1 serving")
            page = "/srv/mirror-web/www/package.html"
            lab.exec("node1", ["sh", "-c", f"echo from the package > {page}"])

            lab.poweroff("node1")
            lab_hakit(lab, "node2", "wait", "mirror-web", "alone", "--timeout", "30")
            wait_until(lambda: served(lab) == "served by node2", 15, "node2 serving")
            assert lab.host_path("node2", page).read_text() == "from the package\n"

            lab.poweron("node1")
            lab_hakit(lab, "node1", "wait", "mirror-web", "second", "--timeout", "60")
            verified = json.loads(lab_hakit(lab, "node2", "verify", "mirror-web", "--json"))
            assert verified["ok"] is True, verified
            assert verified["files"] >= 2, verified  # index.html and package.html at least
            log = lab_hakit(lab, "node2", "log", "mirror-web")
            assert "node1" in log
        print(f"lab scenario with the installed hakit: {time.monotonic() - start:.0f} s")


@pytest.mark.usefixtures("installed")
def test_upgrade_remove_and_purge_keep_the_node_folders(deb: Path) -> None:
    for d in FOLDERS:
        (d / MARK).write_text("made by tests/package/test_deb.py\n")
    # an upgrade (here to the same version) keeps them and sets their modes again
    Path("/var/lib/hakit").chmod(0o755)
    apt("install", "--reinstall", "--no-install-recommends", str(deb))
    assert dpkg_status() == "install ok installed"
    for d, mode in FOLDERS.items():
        assert (d / MARK).exists(), d
        assert d.stat().st_mode & 0o7777 == mode, d
    apt("remove", "hakit")
    assert dpkg_status() == "deinstall ok config-files"
    assert not HAKIT.exists()
    assert not HAKIT.is_symlink()
    assert not (VENV / "bin" / "hakit").exists()
    assert Path("/etc/logrotate.d/hakit").exists()  # a conffile: kept until purge
    for d, mode in FOLDERS.items():
        assert (d / MARK).exists(), d
        assert d.stat().st_mode & 0o7777 == mode, d
    apt("purge", "hakit")
    assert dpkg_status() is None
    assert not Path("/etc/logrotate.d/hakit").exists()
    assert not VENV.exists()
    for d in FOLDERS:
        assert (d / MARK).exists(), d
