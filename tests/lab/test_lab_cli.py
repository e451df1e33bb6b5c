"""`hakit lab ...` as a user types it (a subprocess per command, its own lab root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hakit
from hakit.lab.lab import Lab
from hakit.lab.testing import unavailable_reason, unique_name

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


@pytest.fixture
def name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("HAKIT_LAB_ROOT", str(tmp_path / "labs"))
    name = unique_name()
    try:
        yield name
    finally:
        Lab(name).down(missing_ok=True)


def hakit_lab(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hakit", "lab", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_up_list_exec_cut_down(name: str) -> None:
    up = hakit_lab("up", name, "--nodes", "2", "--networks", "2", "--clients", "1", "--no-daemon")
    assert up.returncode == 0, up.stderr
    for address in ("10.100.1.11", "10.100.2.12", "10.100.1.101"):
        assert address in up.stdout
    assert f"hakit lab down {name}" in up.stdout

    listed = hakit_lab("list", "--json")
    assert listed.returncode == 0, listed.stderr
    desc = json.loads(listed.stdout)["labs"][name]
    assert desc["nodes"] == ["node1", "node2"]
    assert desc["clients"] == ["client1"]
    assert desc["networks"] == ["net1", "net2"]
    assert desc["hosts"]["node2"] == {
        "kind": "node",
        "power": "on",
        "addresses": {"net1": "10.100.1.12", "net2": "10.100.2.12"},
        "netns": f"hk.{name}.node2",
        "daemon_pid": None,
    }
    assert desc["cuts"] == []

    r = hakit_lab("exec", name, "node2", "--", "sh", "-c", "cat; hostname; exit 5", input="in\n")
    assert (r.returncode, r.stdout) == (5, "in\nnode2\n")
    r = hakit_lab("exec", name, "node1", "--", "hakit", "--version")
    assert (r.returncode, r.stdout.strip()) == (0, hakit.__version__)
    r = hakit_lab("exec", name, "client1", "--", "ping", "-c1", "-W1", "-q", "node2-net2")
    assert r.returncode == 0, r.stdout + r.stderr

    r = hakit_lab("cut", name, "node1", "node2", "--network", "net2")
    assert r.returncode == 0
    assert "node1 x node2 on net2" in r.stdout
    cuts = json.loads(hakit_lab("list", "--json").stdout)["labs"][name]["cuts"]
    assert cuts == [{"hosts": ["node1", "node2"], "network": "net2"}]
    r = hakit_lab("exec", name, "node1", "--", "ping", "-c1", "-W0.5", "-q", "10.100.2.12")
    assert r.returncode == 1
    assert hakit_lab("heal", name, "node1").stdout.strip() == "no cuts"

    r = hakit_lab("down", name)
    assert r.returncode == 0, r.stderr
    assert name not in json.loads(hakit_lab("list", "--json").stdout)["labs"]


def test_errors_are_one_actionable_line_and_a_non_zero_exit(name: str) -> None:
    r = hakit_lab("exec", name, "node1", "--", "true")
    assert r.returncode == 1
    assert f"no lab named {name}" in r.stderr
    assert "Traceback" not in r.stderr
    assert hakit_lab("up", name, "--nodes", "1", "--networks", "1", "--no-daemon").returncode == 0
    r = hakit_lab("up", name, "--nodes", "1", "--no-daemon")
    assert r.returncode == 1
    assert f"hakit lab down {name}" in r.stderr
    r = hakit_lab("cut", name, "node1", "node7")
    assert r.returncode == 1
    assert "no host 'node7'" in r.stderr
