"""The operator's daily commands on real daemons (three on loopback): install returns with the
module loaded, `--all` tries every node and reports each, uninstall decides as a whole, every
node sees every module, `wait` and `log` answer what was asked (issue 13 §4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hakit.waiting import wait_until
from tests.daemon.conftest import Cluster

HAKIT = (sys.executable, "-m", "hakit")
MODULE = "kind: mirror\nnodes: [node1, node2]\nscripts: {start_timeout: 10, stop_timeout: 10}\n"


def module_folder(tmp_path: Path, name: str = "web") -> Path:
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "module.yaml").write_text(MODULE)
    return folder


def installed(c: Cluster, tmp_path: Path, name: str = "web") -> str:
    folder = module_folder(tmp_path, name)
    r = c["node1"].hakit("module", "install", str(folder), "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    return name


def test_install_all_returns_with_the_module_loaded_on_every_node(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 1: `prim` right after `install --all` said "no module 'web' on node1"."""
    c = loopback_cluster(3)
    folder = module_folder(tmp_path)
    r = c["node1"].hakit("module", "install", str(folder), "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(
        ln.startswith("node1: ") and "loaded (mirror on node1 and node2)" in ln for ln in lines
    )
    assert any(ln.startswith("node3: ") and "not one of its nodes" in ln for ln in lines)
    assert "install web: done on 3 node(s)" in r.stdout
    # at once, no waiting: the daemon has the module
    r = c["node1"].hakit("prim", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prim accepted" in r.stdout


def test_every_node_sees_every_module_and_all_works_from_any_node(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 4: from node3 (not one of the module's nodes) `--all` said "no module"."""
    c = loopback_cluster(3)
    installed(c, tmp_path)
    r = c["node3"].hakit("prim", "web", "--node", "node1")
    assert r.returncode == 0, r.stdout + r.stderr
    r = c["node3"].hakit("start", "web", "--all")  # node1 runs already: refused there
    assert r.returncode == 1
    assert "start web: done on 1 of 2 node(s); failed on node1" in r.stderr

    def seen() -> bool:
        mod = c["node3"].state()["modules"].get("web", {})
        states = {n: v["state"] for n, v in mod.get("nodes", {}).items()}
        return states == {"node1": "PRIM", "node2": "SECOND"}

    wait_until(seen, 30, "node3 sees web PRIM and SECOND through the heartbeats")
    mod = c["node3"].state()["modules"]["web"]
    assert mod["here"] is False
    assert mod["installed_here"] is True
    assert mod["kind"] == "mirror"
    text = c["node3"].hakit("state")
    assert text.returncode == 0, text.stderr
    assert "web" in text.stdout


def test_all_tries_every_node_and_reports_each(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 1: `start --all` failed on node2 and never tried node3."""
    c = loopback_cluster(3)
    folder = module_folder(tmp_path)
    c["node2"].kill()
    r = c["node1"].hakit("module", "install", str(folder), "--all")
    assert r.returncode == 1
    assert "node2: " in r.stdout
    assert "does not answer" in r.stdout
    assert "node3: " in r.stdout  # tried after node2
    assert "install web: done on 2 of 3 node(s); failed on node2" in r.stderr
    assert (c["node3"].root / "etc" / "modules" / "web" / "module.yaml").is_file()


def test_uninstall_all_refuses_as_a_whole_while_it_runs_or_stops_it_first(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 2: uninstall --all removed the module where it was stopped and left it where it
    ran. Now: nothing removed anywhere while it runs; `--stop` stops it, then removes it."""
    c = loopback_cluster(3)
    installed(c, tmp_path)
    assert c["node1"].hakit("prim", "web").returncode == 0
    wait_until(
        lambda: c["node1"].state()["modules"]["web"]["nodes"]["node1"]["state"] == "ALONE",
        30,
        "web ALONE on node1",
    )
    r = c["node1"].hakit("module", "uninstall", "web", "--all")
    assert r.returncode == 1
    assert "runs on node1 (ALONE ready): nothing uninstalled" in r.stderr
    for n in ("node1", "node2", "node3"):
        assert (c[n].root / "etc" / "modules" / "web").is_dir(), n
    r = c["node1"].hakit("module", "uninstall", "web", "--all", "--stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stop web: done on 1 node(s)" in r.stdout
    assert "uninstall web: done on 3 node(s)" in r.stdout
    for n in ("node1", "node2", "node3"):
        assert not (c[n].root / "etc" / "modules" / "web").exists(), n


def test_wait_says_at_once_that_a_stopped_module_will_not_get_there(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 5: `hakit wait` on a stopped module sat out its whole timeout."""
    c = loopback_cluster(2)
    installed(c, tmp_path)
    began = time.monotonic()
    r = c["node1"].hakit("wait", "web", "PRIM", "--timeout", "25")
    assert r.returncode == 1
    assert time.monotonic() - began < 20, "waited for the timeout"
    assert "web is stopped on node1" in r.stderr
    assert "hakit start web" in r.stderr


def test_log_json_prints_one_entry_per_line(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    c = loopback_cluster(2)
    installed(c, tmp_path)
    for args in (("log", "web", "--json"), ("log", "web", "--json", "--node", "node2")):
        r = c["node1"].hakit(*args)
        assert r.returncode == 0, r.stderr
        entries = [json.loads(line) for line in r.stdout.splitlines()]
        assert entries, args
        assert all(e["module"] == "web" for e in entries)
        assert any(e["kind"] == "module-loaded" for e in entries)


def test_state_as_another_user_says_permission_not_daemon_down(
    loopback_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    """Finding 5: a non-root `hakit state` said the daemon was not running."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        import pytest

        pytest.skip("needs root and setpriv to run as another user")
    c = loopback_cluster(2)
    node = c["node1"]
    for p in (tmp_path, node.root, node.root / "etc", node.root / "var"):
        p.chmod(p.stat().st_mode | 0o005)  # as a real /etc and /var/lib: listable by all
    (node.root / "etc" / "cluster.yaml").chmod(0o644)
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *HAKIT, "state"],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "permission denied" in r.stderr
    assert "not running" not in r.stderr
    assert "Traceback" not in r.stderr


def test_module_check_checks_a_package_and_names_the_missing_module_file(tmp_path: Path) -> None:
    """Finding 5: `module check` refused a .hakit file; a missing module.yaml got the hint meant
    for cluster.yaml; a list too short said "item 2 is missing" twice, in pydantic's words."""
    from tests.daemon.test_input_safety import node_with_cluster

    node = node_with_cluster(tmp_path / "n")
    folder = module_folder(tmp_path)
    pkg = tmp_path / "web.hakit"
    assert node.hakit("module", "package", str(folder), "-o", str(pkg)).returncode == 0
    r = node.hakit("module", "check", str(pkg))
    assert r.returncode == 0, r.stderr
    assert f"{pkg}: OK — mirror module web on node1 and node2" in r.stdout
    (folder / "module.yaml").write_text(MODULE.replace("[node1, node2]", "[]"))
    assert node.hakit("module", "package", str(folder), "-o", str(pkg)).returncode == 0
    r = node.hakit("module", "check", str(pkg))
    assert r.returncode == 2
    assert r.stderr.count("expected at least 2 items, got 0") == 1, r.stderr
    assert f"{pkg}/module.yaml:2: nodes = []" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = node.hakit("module", "check", str(empty))
    assert r.returncode == 2
    assert "a module folder holds its module.yaml" in r.stderr
    assert "cluster init" not in r.stderr
