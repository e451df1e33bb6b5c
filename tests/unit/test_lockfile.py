"""The Debian package's lock files (packaging/requirements.lock, packaging/build-tools.lock):
every runtime dependency of pyproject.toml pinned within its range and hashed, no development
tool among them (the package must never carry one)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def entries(path: Path) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a `uv pip compile --generate-hashes` file."""
    found: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in found, f"{path.name}: {current} pinned twice"
            found[current] = (m.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, n = found[current]
            found[current] = (version, n + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            pytest.fail(f"{path.name}: unexpected line {line!r}")
    return found


LOCK = entries(ROOT / "packaging" / "requirements.lock")
EXTRAS = ("aws", "azure", "gcp")  # the cloud VIP movers' packages: in the Debian package too
RUNTIME = [
    *PYPROJECT["project"]["dependencies"],
    *(s for e in EXTRAS for s in PYPROJECT["project"]["optional-dependencies"][e]),
]
TOOLS = entries(ROOT / "packaging" / "build-tools.lock")


@pytest.mark.parametrize("spec", RUNTIME)
def test_every_runtime_dependency_is_pinned_within_its_range(spec: str) -> None:
    req = Requirement(spec)
    name = canonicalize_name(req.name)
    assert name in LOCK, f"{req.name} is not in packaging/requirements.lock: run packaging/lock"
    version, _ = LOCK[name]
    assert req.specifier.contains(version, prereleases=True), (
        f"{req.name}=={version} in the lock is outside pyproject.toml's {req.specifier}: "
        "run packaging/lock"
    )


def test_every_locked_file_is_hashed() -> None:
    for name, (version, hashes) in {**LOCK, **TOOLS}.items():
        assert hashes >= 1, f"{name}=={version} has no --hash: run packaging/lock"


def test_no_development_tool_is_locked_for_the_package() -> None:
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert set(optional) == {*EXTRAS, "dev"}, "a new extra: in the package or not? (packaging/lock)"
    dev = {canonicalize_name(Requirement(s).name) for s in optional["dev"]} - {"hakit"}
    assert {"pytest", "mypy", "ruff", "hypothesis"} <= dev
    assert not dev & set(LOCK), f"development tools in requirements.lock: {dev & set(LOCK)}"
    assert "click-man" not in LOCK, "click-man is a build tool (build-tools.lock), not shipped"
    assert set(TOOLS) == {"click-man"}
